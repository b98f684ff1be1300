//go:build tools

// Package tools pins the etcd server and etcdctl versions that microlock's
// tests, benchmarks and demo build and run. It is a separate module so that the
// etcd server never enters the library's go.mod.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
