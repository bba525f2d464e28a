package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/guard"
)

const netnsChild = "ASTGUARD_NETNS_CHILD"

// TestNetnsGuardBlocksAndUnblocks runs the whole guard with real iptables in
// a private network namespace (never the host's tables): after the attack
// a datagram from the thief's 127.0.0.2 to a listener on 127.0.0.1 is dropped
// while one from 127.0.0.3 (the legitimate user) arrives; a UDP flow of the
// thief established before the block, let through by an ESTABLISHED accept
// rule above the guard's jump, stops too (its conntrack entry is deleted);
// after `guard unblock 127.0.0.2` datagrams arrive again.
func TestNetnsGuardBlocksAndUnblocks(t *testing.T) {
	if os.Getenv(netnsChild) == "" {
		if os.Geteuid() != 0 {
			t.Fatal("this test needs root (for unshare -n and iptables in a private network namespace); run the tests as root")
		}
		cmd := exec.Command("unshare", "-n", os.Args[0], "-test.run=^TestNetnsGuardBlocksAndUnblocks$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), netnsChild+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("in a private network namespace: %v\n%s", err, out)
		}
		t.Logf("child:\n%s", out)
		return
	}
	sh(t, "ip", "link", "set", "lo", "up")
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	chain := "AGT" + strings.ToUpper(hex.EncodeToString(suffix))

	data, err := os.ReadFile(fixtures + "attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := amitest.Start(amitest.Options{Transcript: bytes.NewReader(data), Speed: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "guard.toml")
	toml := fmt.Sprintf(`mode = "enforce"
[ami]
address = %q
secret = "guardpass"
reconnect_interval = "10m"
[response]
chain = %q
state_file = %q
secrets_file = %q
admin_socket = %q
`, srv.Addr(), chain, filepath.Join(dir, "bans.json"), filepath.Join(dir, "secrets.jsonl"), filepath.Join(dir, "admin.sock"))
	if err := os.WriteFile(cfgPath, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs := &lockedBuffer{}
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- guard.Run(ctx, guard.Options{Config: cfg, Logger: zerolog.New(io.MultiWriter(os.Stderr, logs)).Level(zerolog.WarnLevel),
			Started: func(*guard.Guard) { close(started) }})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("guard: %v", err)
		}
	}()
	<-started

	// An admin's rule above the guard's jump lets established flows through.
	sh(t, "iptables", "-I", "INPUT", "1", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	ln := listenUDP(t, "127.0.0.1:0")
	flow := dialUDP(t, "127.0.0.2:0", ln.LocalAddr().String())
	expectDatagram(t, ln, flow, true, "established flow before the block")
	// The reply makes the flow ESTABLISHED in conntrack.
	if _, err := ln.WriteTo([]byte("reply"), flow.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	expectDatagram(t, ln, flow, true, "established flow before the block")

	srv.Play()
	cl := guard.NewAdminClient(cfg.Response.AdminSocket)
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The ban is recorded before it is applied (rule, then conntrack
		// entries deleted): wait for the daemon's list and the outcome line.
		bs, err := cl.Bans(context.Background())
		if err == nil && slices.ContainsFunc(bs, func(b bans.Ban) bool { return b.Prefix.Addr() == netip.MustParseAddr("127.0.0.2") }) &&
			slices.ContainsFunc(strings.Split(logs.String(), "\n"), func(l string) bool {
				return strings.Contains(l, `"action":"block_ip","result":"done"`) && strings.Contains(l, `"target":"127.0.0.2"`)
			}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("127.0.0.2 not banned: %v %v", bs, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	expectDatagram(t, ln, flow, false, "the thief's established flow after the block")
	thief := dialUDP(t, "127.0.0.2:0", ln.LocalAddr().String())
	expectDatagram(t, ln, thief, false, "a new datagram from 127.0.0.2 after the block")
	user := dialUDP(t, "127.0.0.3:0", ln.LocalAddr().String())
	expectDatagram(t, ln, user, true, "a datagram from 127.0.0.3 (legitimate)")

	var stdout, stderr bytes.Buffer
	if code := run([]string{"unblock", "--config", cfgPath, "127.0.0.2"}, &stdout, &stderr); code != 0 {
		t.Fatalf("guard unblock: exit %d: %s", code, stderr.String())
	}
	expectDatagram(t, ln, thief, true, "a datagram from 127.0.0.2 after guard unblock")
}

func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func listenUDP(t *testing.T, addr string) net.PacketConn {
	t.Helper()
	c, err := net.ListenPacket("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialUDP(t *testing.T, local, remote string) *net.UDPConn {
	t.Helper()
	la, _ := net.ResolveUDPAddr("udp4", local)
	ra, _ := net.ResolveUDPAddr("udp4", remote)
	c, err := net.DialUDP("udp4", la, ra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectDatagram sends one datagram from c and checks whether ln gets it.
// A drop is judged by absence within 300 ms: this is a firewall verdict,
// not a timing assertion.
func expectDatagram(t *testing.T, ln net.PacketConn, c *net.UDPConn, arrive bool, what string) {
	t.Helper()
	msg := make([]byte, 8)
	_, _ = rand.Read(msg)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = ln.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	for {
		n, _, err := ln.ReadFrom(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			if arrive {
				t.Errorf("%s: dropped, want delivered", what)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(buf[:n], msg) {
			if !arrive {
				t.Errorf("%s: delivered, want dropped", what)
			}
			return
		}
	}
}

// lockedBuffer is a log sink safe for the guard's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
