package faultproxy

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// peekHead reads the first HTTP request head of a peer connection (up to the
// blank line; at most 64 KiB and 5 s) and returns the bytes read, the member
// ID in its X-Server-From header (0 if absent) and a reader for the rest of
// the connection.
func peekHead(c net.Conn) (head []byte, from uint64, rest io.Reader) {
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	for len(head) < 64<<10 {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil {
			// Timeout, EOF or an absurdly long line: not a rafthttp
			// request head, so forward it with no sender.
			break
		}
		s := strings.TrimRight(string(line), "\r\n")
		if s == "" {
			break
		}
		if k, v, ok := strings.Cut(s, ":"); ok && strings.EqualFold(strings.TrimSpace(k), "X-Server-From") {
			if id, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil {
				from = id
			}
		}
	}
	return head, from, br
}
