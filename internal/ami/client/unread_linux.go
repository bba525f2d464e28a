package client

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// unread returns how many bytes wait unread in the kernel's receive queue
// of a TCP connection, and false when it cannot tell (not a socket).
func unread(c net.Conn) (int, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	n, ierr := 0, error(nil)
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil || ierr != nil {
		return 0, false
	}
	return n, true
}
