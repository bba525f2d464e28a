//go:build !linux

package client

import "net"

// unread cannot tell how many bytes wait in the socket on this system.
func unread(net.Conn) (int, bool) { return 0, false }
