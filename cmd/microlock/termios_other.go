//go:build aix || linux || solaris

package main

import "golang.org/x/sys/unix"

// ioctlReadTermios reads a terminal's attributes: it fails on anything
// that is not a terminal.
const ioctlReadTermios = unix.TCGETS
