package client

import (
	"net"
	"testing"
)

// unread tells the bytes waiting in a TCP socket, and nothing of a pipe.
func TestUnread(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if n, ok := unread(a); n != 0 || !ok {
		t.Errorf("nothing sent: %d, %v", n, ok)
	}
	if _, err := b.Write(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	for {
		n, ok := unread(a)
		if !ok || n > 100 {
			t.Fatalf("unread = %d, %v", n, ok)
		}
		if n == 100 {
			break
		}
	}
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if _, ok := unread(p); ok {
		t.Error("unread of a pipe says it can tell")
	}
}
