//go:build tools

// Package tools pins the etcd 3.5 server that `make compat` runs microlock's
// tests against. It is a module of its own so that its dependencies stay
// apart from those of the pinned current etcd in the parent directory.
package tools

import _ "go.etcd.io/etcd/server/v3"
