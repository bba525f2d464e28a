package main

import (
	"bytes"
	"context"
	"crypto/rand"
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
	"github.com/ti-mo/conntrack"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/guard"
	"github.com/astguard/astguard/internal/testenv"
)

// chainEnv passes the chain name a netns test picked to its child.
const chainEnv = "ASTGUARD_TEST_CHAIN"

// TestNetnsGuardBlocksAndUnblocks runs the whole guard with real iptables in
// a private network namespace (never the host's tables), with kernel
// address sets and with one rule per ban: after the attack a datagram from
// the thief's 127.0.0.2 to a listener on 127.0.0.1 is dropped while one
// from 127.0.0.3 (the legitimate user) arrives; a UDP flow of the thief
// established before the block, let through by an ESTABLISHED accept rule
// above the guard's jump, stops too (its conntrack entry is deleted);
// after `guard unblock 127.0.0.2` datagrams arrive again.
func TestNetnsGuardBlocksAndUnblocks(t *testing.T) {
	for _, match := range []string{config.MatchIPSet, config.MatchRules} {
		t.Run(match, func(t *testing.T) {
			t.Parallel()
			testenv.RequireCommand(t, "iptables", "ip6tables", "ipset")
			chain := testenv.RandomChain()
			if !testenv.InNetns(t, chainEnv+"="+chain) {
				testenv.NoChainOnHost(t, chain)
				return
			}
			netnsBlocksAndUnblocks(t, match, os.Getenv(chainEnv))
		})
	}
}

func netnsBlocksAndUnblocks(t *testing.T, match, chain string) {
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
firewall_match = %q
chain = %q
state_file = %q
secrets_file = %q
admin_socket = %q
`, srv.Addr(), match, chain, filepath.Join(dir, "bans.json"), filepath.Join(dir, "secrets.jsonl"), filepath.Join(dir, "admin.sock"))
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
	select {
	case <-started:
	case err := <-done:
		done <- err // for the deferred stop
		t.Fatalf("guard did not start: %v", err)
	}

	// An admin's rule above the guard's jump lets established flows through.
	sh(t, "iptables", "-I", "INPUT", "1", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	ln := listenUDP(t, "127.0.0.1:0")
	flow := dialUDP(t, "127.0.0.2:0", ln.LocalAddr().String())
	expectDelivered(t, ln, flow, "established flow before the block")
	// The reply makes the flow ESTABLISHED in conntrack.
	if _, err := ln.WriteTo([]byte("reply"), flow.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	expectDelivered(t, ln, flow, "established flow before the block")

	srv.Play()
	cl := guard.NewAdminClient(cfg.Response.AdminSocket)
	// The ban is recorded before it is applied (rule, then conntrack
	// entries deleted): wait for the daemon's list and the outcome line.
	testenv.WaitFor(t, "the ban of 127.0.0.2", 30*time.Second, func() bool {
		bs, err := cl.Bans(context.Background())
		return err == nil && slices.ContainsFunc(bs, func(b bans.Ban) bool { return b.Prefix.Addr() == netip.MustParseAddr("127.0.0.2") }) &&
			slices.ContainsFunc(strings.Split(logs.String(), "\n"), func(l string) bool {
				return strings.Contains(l, `"action":"block_ip","result":"done"`) && strings.Contains(l, `"target":"127.0.0.2"`)
			})
	})

	if banned := testenv.Banned(t, chain); match == config.MatchIPSet && !strings.Contains(banned, "127.0.0.2 timeout") {
		t.Fatalf("firewall_match = ipset: the ban is not in a set with a timeout:\n%s", banned)
	}
	// The firewall deletes the thief's conntrack entries right after the
	// block, in the background.
	testenv.WaitFor(t, "the conntrack entries of 127.0.0.2 deleted", 10*time.Second, func() bool {
		return !tracked(t, netip.MustParseAddr("127.0.0.2"))
	})
	expectDropped(t, ln, flow, chain, "the thief's established flow after the block")
	thief := dialUDP(t, "127.0.0.2:0", ln.LocalAddr().String())
	expectDropped(t, ln, thief, chain, "a new datagram from 127.0.0.2 after the block")
	user := dialUDP(t, "127.0.0.3:0", ln.LocalAddr().String())
	expectDelivered(t, ln, user, "a datagram from 127.0.0.3 (legitimate)")

	var stdout, stderr bytes.Buffer
	if code := run([]string{"unblock", "--config", cfgPath, "127.0.0.2"}, &stdout, &stderr); code != 0 {
		t.Fatalf("guard unblock: exit %d: %s", code, stderr.String())
	}
	expectDelivered(t, ln, thief, "a datagram from 127.0.0.2 after guard unblock")
}

// tracked reports whether conntrack has an entry whose original source is
// a.
func tracked(t *testing.T, a netip.Addr) bool {
	t.Helper()
	c, err := conntrack.Dial(nil)
	if err != nil {
		t.Fatalf("conntrack netlink socket: %v", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		t.Fatalf("conntrack dump: %v", err)
	}
	return slices.ContainsFunc(flows, func(f conntrack.Flow) bool { return f.TupleOrig.IP.SourceAddress.Unmap() == a })
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

// expectDelivered sends one datagram from c and waits until ln gets it.
// On loopback a datagram that does not come within 10 s is lost, not late.
func expectDelivered(t *testing.T, ln net.PacketConn, c *net.UDPConn, what string) {
	t.Helper()
	msg := make([]byte, 8)
	_, _ = rand.Read(msg)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = ln.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		n, _, err := ln.ReadFrom(buf)
		if err != nil {
			t.Fatalf("%s: not delivered: %v", what, err)
		}
		if bytes.Equal(buf[:n], msg) {
			return
		}
	}
}

// expectDropped sends one datagram from c and waits until the DROP rule
// of chain for c's address (or for the set holding it) has counted it; it
// must not reach ln meanwhile. The rule's counter, not a quiet while, says
// the firewall dropped it.
func expectDropped(t *testing.T, ln net.PacketConn, c *net.UDPConn, chain, what string) {
	t.Helper()
	src := c.LocalAddr().(*net.UDPAddr).IP.String() + "/32"
	before := testenv.Drops(t, "iptables", chain, src)
	msg := make([]byte, 8)
	_, _ = rand.Read(msg)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	testenv.WaitFor(t, what+" counted by the DROP rule of "+src, 10*time.Second, func() bool {
		for {
			_ = ln.SetReadDeadline(time.Now().Add(time.Millisecond)) // a deadline already past reads nothing
			n, _, err := ln.ReadFrom(buf)
			if err != nil {
				break
			}
			if bytes.Equal(buf[:n], msg) {
				t.Fatalf("%s: delivered, want dropped", what)
			}
		}
		return testenv.Drops(t, "iptables", chain, src) > before
	})
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
