package cluster

// Tests against a real etcd: each starts an embedded single-member etcd on
// free loopback ports in a temporary directory (closed in t.Cleanup).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func startEtcd(t *testing.T) *Embedded {
	t.Helper()
	e, err := StartEmbedded(context.Background(), EmbeddedConfig{
		Name: "test", Dir: filepath.Join(t.TempDir(), "kvdb"), ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func connect(t *testing.T, endpoints []string, localIP string) *clientv3.Client {
	t.Helper()
	cli, err := Connect(context.Background(), endpoints, localIP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func join(t *testing.T, e *Embedded, name string, opts JoinOptions) *Store {
	t.Helper()
	s, err := Join(context.Background(), connect(t, e.Endpoints(), ""), e.Endpoints(), name, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func record(id, host string) func() NodeRecord {
	return func() NodeRecord {
		return NodeRecord{ID: id, Hostname: host, MgmtAddr: host + ":9001", DataAddr: host + ":10809", Zone: "default", Rack: "default",
			Pools: []PoolSummary{{ID: 0, IOPriority: "low", Size: 1 << 30, Used: 0, Status: "Online"}}}
	}
}

// statusOf returns node id's status as s lists it, "" when not listed.
func statusOf(t *testing.T, nodes []Node, id string) string {
	t.Helper()
	for _, n := range nodes {
		if n.ID == id {
			return n.Status
		}
	}
	return ""
}

func TestParseEndpoints(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		bad  bool
	}{
		{in: "etcd://h1:2379,h2:2379,h3:2379", want: []string{"http://h1:2379", "http://h2:2379", "http://h3:2379"}},
		{in: "etcd:http://10.0.0.1:2379,etcd:http://10.0.0.2:2379", want: []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379"}},
		{in: "127.0.0.1:9019", want: []string{"http://127.0.0.1:9019"}},
		{in: "http://[::1]:2379", want: []string{"http://[::1]:2379"}},
		{in: "etcd://h1:2379, ", want: []string{"http://h1:2379"}},
		{in: "", bad: true},
		{in: "etcd://h1", bad: true},
		{in: "etcd:https://h1:2379", bad: true},
		{in: "etcd://h1:2379/path", bad: true},
		{in: "etcd://:2379", bad: true},
	} {
		got, err := ParseEndpoints(tc.in)
		if tc.bad {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseEndpoints(%q) = %v, %v; want ErrInvalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("ParseEndpoints(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

// The identity is created once: nodes joining at the same time agree on
// one UUID, and a later join (a restart) reads the same one.
func TestJoinCreatesIdentityOnce(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	const n = 8
	uuids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		cli := connect(t, e.Endpoints(), "")
		wg.Go(func() {
			s, err := Join(context.Background(), cli, e.Endpoints(), "alpha", JoinOptions{})
			if err != nil {
				t.Error(err)
				return
			}
			uuids[i] = s.Identity().UUID
		})
	}
	wg.Wait()
	for i := range uuids {
		if uuids[i] == "" || uuids[i] != uuids[0] {
			t.Fatalf("joins disagree on the cluster uuid: %v", uuids)
		}
	}
	if again := join(t, e, "alpha", JoinOptions{}); again.Identity().UUID != uuids[0] {
		t.Fatalf("rejoin: uuid %s, want %s", again.Identity().UUID, uuids[0])
	}
	if other := join(t, e, "beta", JoinOptions{}); other.Identity().UUID == uuids[0] {
		t.Fatal("cluster beta got alpha's uuid")
	}
}

// An embedded kvdb belongs to its node's cluster: a node of another cluster
// name is refused there, one of the same name is not.
func TestEmbeddedRefusesOtherCluster(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	join(t, e, "alpha", JoinOptions{Embedded: true})
	join(t, e, "alpha", JoinOptions{})
	_, err := Join(context.Background(), connect(t, e.Endpoints(), ""), e.Endpoints(), "beta", JoinOptions{})
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("join of beta into alpha's embedded kvdb: %v, want ErrMismatch", err)
	}
	t.Log(err)
	if _, err := Join(context.Background(), connect(t, e.Endpoints(), ""), e.Endpoints(), "a/b", JoinOptions{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("cluster name with '/': %v, want ErrInvalid", err)
	}
}

// Two creates of one volume name at once, from different clients: exactly
// one wins, the others get ErrExists; after a delete the name is free.
func TestVolumeNameUnique(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	const n = 6
	stores := make([]*Store, n)
	for i := range stores {
		stores[i] = join(t, e, "alpha", JoinOptions{})
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, s := range stores {
		wg.Go(func() {
			<-start
			_, errs[i] = s.CreateVolume(context.Background(), VolumeSpec{Name: "db", ID: fmt.Sprint(i), Size: 1 << 30, Repl: 1,
				Replicas: []Replica{{Node: fmt.Sprintf("node-%d", i)}}})
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("creates %d and %d of one name both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, ErrExists):
			t.Fatalf("create %d: %v, want ErrExists", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no create succeeded")
	}
	spec, err := stores[0].Volume(context.Background(), "db")
	if err != nil || spec.ID != fmt.Sprint(winner) || spec.Replicas[0].Node != fmt.Sprintf("node-%d", winner) {
		t.Fatalf("volume db = %+v, %v; want the winner's (%d) spec", spec, err, winner)
	}
	vols, err := stores[1].Volumes(context.Background())
	if err != nil || len(vols) != 1 {
		t.Fatalf("Volumes = %+v, %v; want one", vols, err)
	}
	if err := stores[2].DeleteVolume(context.Background(), "db", spec.Rev+1); !errors.Is(err, ErrConflict) {
		t.Fatalf("delete at another revision: %v, want ErrConflict", err)
	}
	if err := stores[2].DeleteVolume(context.Background(), "db", spec.Rev); err != nil {
		t.Fatal(err)
	}
	if err := stores[2].DeleteVolume(context.Background(), "db", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
	if _, err := stores[0].Volume(context.Background(), "db"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Volume after delete: %v, want ErrNotFound", err)
	}
	if _, err := stores[3].CreateVolume(context.Background(), VolumeSpec{Name: "db"}); err != nil {
		t.Fatalf("create after delete: %v", err)
	}
	if _, err := stores[3].CreateVolume(context.Background(), VolumeSpec{Name: "../x"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("name with '/': %v, want ErrInvalid", err)
	}
	// A beta volume of the same name is another cluster's business.
	if _, err := join(t, e, "beta", JoinOptions{}).CreateVolume(context.Background(), VolumeSpec{Name: "db"}); err != nil {
		t.Fatalf("same name in another cluster: %v", err)
	}
}

// A registered node is Online; one stopped cleanly is Offline at once; one
// that dies without revoking (its client gone) is Offline within 15 s, and
// stays listed.
func TestNodeLiveness(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	observer := join(t, e, "alpha", JoinOptions{})
	ctx := context.Background()

	clean, err := join(t, e, "alpha", JoinOptions{}).Register(ctx, MemberConfig{Record: record("node-clean", "h1")})
	if err != nil {
		t.Fatal(err)
	}
	deadCli, err := Connect(ctx, e.Endpoints(), "")
	if err != nil {
		t.Fatal(err)
	}
	deadStore, err := Join(ctx, deadCli, e.Endpoints(), "alpha", JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dead, err := deadStore.Register(ctx, MemberConfig{Record: record("node-dead", "h2")})
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := observer.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if statusOf(t, nodes, "node-clean") != StatusOnline || statusOf(t, nodes, "node-dead") != StatusOnline {
		t.Fatalf("after register: %+v, want both Online", nodes)
	}
	if !clean.Registered() || nodes[0].Hostname != "h1" || nodes[0].MgmtAddr != "h1:9001" || len(nodes[0].Pools) != 1 {
		t.Fatalf("record not as registered: %+v", nodes[0])
	}

	clean.Stop()
	nodes, err = observer.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := statusOf(t, nodes, "node-clean"); got != StatusOffline {
		t.Fatalf("after Stop: node-clean is %q, want Offline at once", got)
	}

	// Death: the client goes away without revoking; only the lease's
	// expiry can tell.
	deadCli.Close()
	died := time.Now()
	for statusOf(t, nodes, "node-dead") != StatusOffline {
		if time.Since(died) > 15*time.Second {
			t.Fatalf("node-dead still %s 15 s after its client died", statusOf(t, nodes, "node-dead"))
		}
		time.Sleep(200 * time.Millisecond)
		if nodes, err = observer.Nodes(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("dead node Offline after %v", time.Since(died).Round(100*time.Millisecond))
	dead.Stop() // its goroutines; the lease is already gone

	// The same node id from another host while it is Online is refused;
	// the same host (a restart) takes it over.
	again, err := join(t, e, "alpha", JoinOptions{}).Register(ctx, MemberConfig{Record: record("node-dead", "h2")})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Stop()
	if _, err := join(t, e, "alpha", JoinOptions{}).Register(ctx, MemberConfig{Record: record("node-dead", "elsewhere")}); !errors.Is(err, ErrExists) {
		t.Fatalf("node id Online elsewhere: %v, want ErrExists", err)
	}
	restarted, err := join(t, e, "alpha", JoinOptions{}).Register(ctx, MemberConfig{Record: record("node-dead", "h2")})
	if err != nil {
		t.Fatalf("restart of an Online node on its own host: %v", err)
	}
	defer restarted.Stop()
}

// A node whose clock is 5 s ahead is flagged by every member, the others
// are not.
func TestClockSkewFlagged(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := context.Background()
	var members []*Member
	for i, shift := range []time.Duration{0, 0, 5 * time.Second} {
		clock := func() time.Time { return time.Now().Add(shift) }
		m, err := join(t, e, "alpha", JoinOptions{}).Register(ctx, MemberConfig{Record: record(fmt.Sprintf("node-%d", i), fmt.Sprintf("h%d", i)), Clock: clock})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Stop()
		members = append(members, m)
	}
	for _, m := range members {
		deadline := time.Now().Add(30 * time.Second)
		for {
			nodes, err := m.Nodes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			measured := 0
			for _, n := range nodes {
				if n.ClockMeasured {
					measured++
				}
			}
			if measured == 3 {
				for _, n := range nodes {
					if want := n.ID == "node-2"; n.ClockSkew != want {
						t.Fatalf("seen from %s: %s clock offset %v, skew %v; want skew %v", m.ID(), n.ID, n.ClockOffset, n.ClockSkew, want)
					}
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("seen from %s: only %d of 3 clocks measured after 30 s", m.ID(), measured)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// With etcd gone every call fails with ErrUnavailable within a few
// seconds, never hangs; when it is back (same data) calls work again.
func TestKvdbDownFailsFast(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "kvdb")
	cfg := EmbeddedConfig{Name: "test", Dir: dir, ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0"}
	e, err := StartEmbedded(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ClientAddr = e.ClientAddr() // the same address on restart
	s := join(t, e, "alpha", JoinOptions{})
	e.Close()

	ctx := context.Background()
	for name, call := range map[string]func() error{
		"Health":       func() error { return s.Health(ctx) },
		"Nodes":        func() error { _, err := s.Nodes(ctx); return err },
		"CreateVolume": func() error { _, err := s.CreateVolume(ctx, VolumeSpec{Name: "v"}); return err },
		"Volumes":      func() error { _, err := s.Volumes(ctx); return err },
	} {
		began := time.Now()
		err := call()
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s with etcd down: %v, want ErrUnavailable", name, err)
		}
		if took := time.Since(began); took > 10*time.Second {
			t.Errorf("%s with etcd down took %v", name, took)
		}
		t.Logf("%s: %v", name, err)
	}
	if _, err := Connect(ctx, e.Endpoints(), ""); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Connect with etcd down: %v, want ErrUnavailable", err)
	}

	e2, err := StartEmbedded(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e2.Close)
	deadline := time.Now().Add(30 * time.Second)
	for s.Health(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("store still unavailable 30 s after etcd came back: %v", s.Health(ctx))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := s.CreateVolume(ctx, VolumeSpec{Name: "v"}); err != nil {
		t.Fatalf("create after etcd came back: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "member")); err != nil {
		t.Fatalf("embedded data not in its dir: %v", err)
	}
}

// Connections to etcd leave from the node's management address: a relay in
// front of etcd sees every connection come from 127.0.0.5.
func TestConnectBindsManagementAddress(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	relay, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	sources := make(chan string, 16)
	go func() {
		for {
			c, err := relay.Accept()
			if err != nil {
				return
			}
			sources <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			up, err := net.Dial("tcp", e.ClientAddr())
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	eps := []string{"http://" + relay.Addr().String()}
	s, err := Join(context.Background(), connect(t, eps, "127.0.0.5"), eps, "alpha", JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := len(sources) // the connections made so far (the relay may get more later)
	for range n {
		if src := <-sources; src != "127.0.0.5" {
			t.Errorf("a connection to etcd came from %s, want 127.0.0.5", src)
		}
	}
	if n == 0 {
		t.Fatal("no connection went through the relay")
	}
}

// A node whose lease is lost while etcd is down (longer than LeaseTTL)
// registers again by itself when etcd is back, and is Online.
func TestMemberRegistersAgainAfterOutage(t *testing.T) {
	t.Parallel()
	cfg := EmbeddedConfig{Name: "test", Dir: filepath.Join(t.TempDir(), "kvdb"), ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0"}
	e, err := StartEmbedded(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ClientAddr = e.ClientAddr()
	s := join(t, e, "alpha", JoinOptions{})
	m, err := s.Register(context.Background(), MemberConfig{Record: record("node-1", "h1")})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	first, _, ok := m.Lease()
	if !ok || !m.HoldsFresh(first, 3*time.Second) || m.HoldsFresh(first+"0", 3*time.Second) || m.HoldsFresh("", 0) {
		t.Fatalf("HoldsFresh wrong for the lease just granted (%q, %v)", first, ok)
	}
	e.Close()

	deadline := time.Now().Add(3 * LeaseTTL * time.Second)
	for m.HoldsFresh(first, 0) {
		if time.Now().After(deadline) {
			t.Fatalf("lease %s still fresh %v after etcd went down", first, 3*LeaseTTL*time.Second)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for m.Registered() {
		if time.Now().After(deadline) {
			t.Fatalf("member still holds its lease %v after etcd went down", 3*LeaseTTL*time.Second)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e2, err := StartEmbedded(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e2.Close)
	deadline = time.Now().Add(30 * time.Second)
	for {
		nodes, err := s.Nodes(context.Background())
		if err == nil && m.Registered() && statusOf(t, nodes, "node-1") == StatusOnline {
			// A new lease: the old one's holder (a coordinator that
			// claimed under it) is not fresh again.
			second, _, _ := m.Lease()
			if second == first || m.HoldsFresh(first, 0) || !m.HoldsFresh(second, 0) {
				t.Fatalf("after registering again: lease %s (was %s), old fresh %v, new fresh %v", second, first, m.HoldsFresh(first, 0), m.HoldsFresh(second, 0))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("member not registered again 30 s after etcd came back: registered %v, nodes %+v, %v", m.Registered(), nodes, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cluster delete: refused for an unknown or Online node and, unless force,
// for one holding volumes; a deleted node never registers again.
func TestDeleteNode(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	s := join(t, e, "alpha", JoinOptions{})
	ctx := context.Background()
	withVolumes := func() NodeRecord {
		r := record("node-v", "h1")()
		r.Volumes, r.VolumeCount = []string{"db", "logs"}, 2
		return r
	}
	mv, err := join(t, e, "alpha", JoinOptions{}).Register(ctx, MemberConfig{Record: withVolumes})
	if err != nil {
		t.Fatal(err)
	}
	me, err := join(t, e, "alpha", JoinOptions{}).Register(ctx, MemberConfig{Record: record("node-e", "h2")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteNode(ctx, "nope", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete of an unknown node: %v, want ErrNotFound", err)
	}
	if _, err := s.DeleteNode(ctx, "node-e", true); !errors.Is(err, ErrOnline) {
		t.Fatalf("delete of an Online node: %v, want ErrOnline", err)
	}
	mv.Stop()
	me.Stop()
	if _, err := s.DeleteNode(ctx, "node-v", false); !errors.Is(err, ErrHasVolumes) || !strings.Contains(err.Error(), "db, logs") {
		t.Fatalf("delete of a node with volumes: %v, want ErrHasVolumes naming db, logs", err)
	}
	rec, err := s.DeleteNode(ctx, "node-v", true)
	if err != nil || fmt.Sprint(rec.Volumes) != "[db logs]" {
		t.Fatalf("forced delete: %+v, %v; want the record with its volumes", rec, err)
	}
	if _, err := s.DeleteNode(ctx, "node-e", false); err != nil {
		t.Fatalf("delete of an Offline node without volumes: %v", err)
	}
	nodes, err := s.Nodes(ctx)
	if err != nil || len(nodes) != 0 {
		t.Fatalf("nodes after deletes: %+v, %v; want none", nodes, err)
	}
	if _, err := join(t, e, "alpha", JoinOptions{}).Register(ctx, MemberConfig{Record: record("node-e", "h2")}); !errors.Is(err, ErrRemoved) {
		t.Fatalf("a deleted node registering again: %v, want ErrRemoved", err)
	}
	if _, err := s.DeleteNode(ctx, "node-e", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
}

// An update compares the revision it read: of two writers that read the
// same spec, the second is refused and changes nothing.
func TestUpdateVolumeComparesRevision(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	s := join(t, e, "alpha", JoinOptions{})
	ctx := context.Background()
	spec, err := s.CreateVolume(ctx, VolumeSpec{Name: "db", State: VolumeCreating, Replicas: []Replica{{Node: "n1", Pool: -1}}})
	if err != nil {
		t.Fatal(err)
	}
	a, b := spec, spec
	a.State, b.State = VolumeReady, VolumeDeleting
	if a, err = s.UpdateVolume(ctx, a); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateVolume(ctx, b); !errors.Is(err, ErrConflict) {
		t.Fatalf("update at a stale revision: %v, want ErrConflict", err)
	}
	got, err := s.Volume(ctx, "db")
	if err != nil || got.State != VolumeReady || got.Rev != a.Rev || got.Node() != "n1" {
		t.Fatalf("spec = %+v, %v; want the first update's", got, err)
	}
}

// A forced node delete removes the specs of the volumes on the node (and
// only those); the delete without force names them.
func TestDeleteNodeRemovesItsVolumes(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	s := join(t, e, "alpha", JoinOptions{})
	ctx := context.Background()
	m, err := join(t, e, "alpha", JoinOptions{}).Register(ctx, MemberConfig{Record: record("node-x", "hx")})
	if err != nil {
		t.Fatal(err)
	}
	m.Stop() // revokes its lease: Offline at once, unless the revoke is lost
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		nodes, err := s.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if statusOf(t, nodes, "node-x") == StatusOffline {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node-x not Offline 15 s after it stopped")
		}
	}
	for _, v := range []VolumeSpec{
		{Name: "a", Replicas: []Replica{{Node: "node-x"}}},
		{Name: "a.snap", Snapshot: true, Parent: "a", Replicas: []Replica{{Node: "node-x"}}},
		{Name: "b", Replicas: []Replica{{Node: "node-y"}}},
	} {
		if _, err := s.CreateVolume(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.DeleteNode(ctx, "node-x", false); !errors.Is(err, ErrHasVolumes) || !strings.Contains(err.Error(), "holds 1 volume(s) (a)") {
		t.Fatalf("delete without force: %v, want ErrHasVolumes naming a", err)
	}
	rec, err := s.DeleteNode(ctx, "node-x", true)
	if err != nil || fmt.Sprint(rec.Volumes) != "[a]" || rec.VolumeCount != 1 {
		t.Fatalf("forced delete: %+v, %v", rec, err)
	}
	vols, err := s.Volumes(ctx)
	if err != nil || len(vols) != 1 || vols[0].Name != "b" {
		t.Fatalf("volumes after the forced delete: %+v, %v; want only b", vols, err)
	}
}

func TestPlace(t *testing.T) {
	pool := func(prio string, size, used int64) PoolSummary {
		return PoolSummary{IOPriority: prio, Size: size, Used: used, Status: "Online"}
	}
	node := func(id, status, zone, rack string, pools ...PoolSummary) Node {
		return Node{NodeRecord: NodeRecord{ID: id, Zone: zone, Rack: rack, Pools: pools}, Status: status}
	}
	const G = 1 << 30
	nodes := []Node{
		node("n1", StatusOnline, "z1", "r1", pool("low", 100*G, 10*G)),
		node("n2", StatusOffline, "z2", "r2", pool("high", 100*G, 0)),
		node("n3", StatusOnline, "z2", "r3", pool("medium", 20*G, 16*G)),
		node("n4", StatusOnline, "z3", "r4"), // storageless
		node("n5", StatusOnline, "z1", "r5", pool("low", 50*G, 0)),
	}
	for _, tc := range []struct {
		name    string
		req     PlaceRequest
		want    string // node id, or the words of the error
		wantErr bool
	}{
		{"low: most free", PlaceRequest{Size: G, IOPriority: "low"}, "n1", false},
		{"high falls back to medium (n2 Offline)", PlaceRequest{Size: G, IOPriority: "high"}, "n3", false},
		{"medium short of space still beats low", PlaceRequest{Size: 10 * G, IOPriority: "medium"}, "n3", false},
		{"room for the size beats more free", PlaceRequest{Size: 95 * G, IOPriority: "low"}, "n1", false},
		{"zones", PlaceRequest{Size: G, IOPriority: "low", Placement: Placement{Zones: []string{"z2"}}}, "n3", false},
		{"racks", PlaceRequest{Size: G, Placement: Placement{Racks: []string{"r5", "r3"}}}, "n5", false},
		{"nodes", PlaceRequest{Size: G, Placement: Placement{Nodes: []string{"n5"}}}, "n5", false},
		{"zone without Online storage", PlaceRequest{Name: "v", Size: G, Placement: Placement{Zones: []string{"z3", "z9"}}},
			`cannot create volume "v": no Online node with a storage pool in zones z3, z9: node n1 is in zone z1; node n2 is Offline; node n3 is in zone z2; node n4 has no usable storage pool; node n5 is in zone z1`, true},
		{"nodes offline or unknown", PlaceRequest{Name: "v", Size: G, Placement: Placement{Nodes: []string{"n2", "n9"}}},
			`no Online node with a storage pool among nodes n2, n9: node n2 is Offline; node n9 is not in the cluster`, true},
		{"no nodes", PlaceRequest{Name: "v", Size: G, Placement: Placement{Racks: []string{"r1"}}}, "", false},
	} {
		in := nodes
		if tc.name == "no nodes" {
			in, tc.want, tc.wantErr = nil, "the cluster has no nodes", true
		}
		got, err := Place(in, tc.req)
		switch {
		case tc.wantErr && (!errors.Is(err, ErrNoPlacement) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err %v, want ErrNoPlacement saying %q", tc.name, err, tc.want)
		case !tc.wantErr && (err != nil || got.ID != tc.want):
			t.Errorf("%s: got %s, %v; want %s", tc.name, got.ID, err, tc.want)
		}
	}
}
