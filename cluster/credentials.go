package cluster

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Credentials (cloudsnap stores) live under
//
//	/cairn/v1/<cluster>/credentials/<name>   the credential, JSON (its
//	                                         shape is control's; opaque here)
//
// so that every node of the cluster, and a node restoring after the loss of
// another, can reach the same buckets. The values hold secrets: the API
// never returns them, but anyone who can read the etcd can (as with
// Portworx's kvdb); protect the etcd accordingly.

// PutCredential records a new credential; ErrExists when the name is taken.
func (s *Store) PutCredential(ctx context.Context, name string, value []byte) error {
	if err := validateName("credential", name); err != nil {
		return err
	}
	key := s.prefix + "credentials/" + name
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := s.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value))).Commit()
	if err != nil {
		return s.unavailable(err)
	}
	if !resp.Succeeded {
		return errorf(ErrExists, "credential %q already exists in cluster %q", name, s.identity.Name)
	}
	return nil
}

// Credential returns the value of credential name, or ErrNotFound.
func (s *Store) Credential(ctx context.Context, name string) ([]byte, error) {
	if err := validateName("credential", name); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := s.cli.Get(cctx, s.prefix+"credentials/"+name)
	if err != nil {
		return nil, s.unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, errorf(ErrNotFound, "credential %q not found", name)
	}
	return resp.Kvs[0].Value, nil
}

// Credentials returns every credential's value, by name.
func (s *Store) Credentials(ctx context.Context) ([][]byte, error) {
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := s.cli.Get(cctx, s.prefix+"credentials/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, s.unavailable(err)
	}
	out := make([][]byte, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, kv.Value)
	}
	return out, nil
}

// DeleteCredential removes credential name, or answers ErrNotFound.
func (s *Store) DeleteCredential(ctx context.Context, name string) error {
	if err := validateName("credential", name); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := s.cli.Delete(cctx, s.prefix+"credentials/"+name)
	if err != nil {
		return s.unavailable(err)
	}
	if resp.Deleted == 0 {
		return errorf(ErrNotFound, "credential %q not found", name)
	}
	return nil
}
