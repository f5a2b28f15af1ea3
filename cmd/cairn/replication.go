package main

import (
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/cairn-storage/cairn/control"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/replication"
)

// replicationListener is the node's replica server and the address other
// nodes' coordinators reach it at.
type replicationListener struct {
	Server *replication.Server
	Addr   string
}

// startReplication serves this node's replicas to coordinators on addr;
// Serve's end is sent on errc. stateDir keeps each replica's epoch. stop
// (idempotent) closes the listener and every connection.
func startReplication(eng *engine.Engine, node *control.Node, addr, stateDir string, log *slog.Logger, errc chan<- error) (stop func(), _ replicationListener, _ error) {
	uuid, err := control.ParseClusterUUID(node.ClusterUUID())
	if err != nil {
		return nil, replicationListener{}, fmt.Errorf("replication: %w", err)
	}
	srv, err := replication.NewServer(control.ReplicaVolumes{Engine: eng}, replication.Config{Cluster: uuid, StateDir: stateDir, Logger: log})
	if err != nil {
		return nil, replicationListener{}, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, replicationListener{}, fmt.Errorf("replication: %w (--repl-listen)", err)
	}
	go func() { errc <- srv.Serve(l) }()
	log.Info("replication listening", "addr", l.Addr().String())
	var once sync.Once
	return func() { once.Do(func() { srv.Close() }) }, replicationListener{Server: srv, Addr: l.Addr().String()}, nil
}
