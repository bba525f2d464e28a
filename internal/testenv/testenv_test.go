package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// recorder is a testing.TB that remembers how a helper ended the test
// and what it logged.
type recorder struct {
	testing.TB
	skipped, failed string
	logs            strings.Builder
}

func (r *recorder) Helper() {}

func (r *recorder) Log(args ...any) { fmt.Fprintln(&r.logs, args...) }

func (r *recorder) Skip(args ...any) {
	r.skipped = fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recorder) Fatal(args ...any) {
	r.failed = fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// call runs f with a recorder, as a test would run it: in a goroutine that
// Skip and Fatalf end.
func call(t *testing.T, f func(tb testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

const missing = "astguard-no-such-command"

func TestRequireCommandSkipsOrFails(t *testing.T) {
	t.Setenv(StrictEnv, "")
	r := call(t, func(tb testing.TB) { RequireCommand(tb, "sh", missing, "ip6tables-legacy") })
	if r.failed != "" || !strings.HasPrefix(r.skipped, "needs "+missing) || !strings.Contains(r.skipped, "not found in PATH") {
		t.Errorf("not strict: skipped %q, failed %q; want a skip naming %s", r.skipped, r.failed, missing)
	}
	if strings.Contains(r.skipped, "sh,") {
		t.Errorf("sh, which is installed, named as missing: %q", r.skipped)
	}

	t.Setenv(StrictEnv, "1")
	r = call(t, func(tb testing.TB) { RequireCommand(tb, missing) })
	if r.skipped != "" || !strings.Contains(r.failed, "needs "+missing+", not found in PATH") || !strings.Contains(r.failed, StrictEnv+"=1") {
		t.Errorf("strict: skipped %q, failed %q; want a failure naming %s and %s", r.skipped, r.failed, missing, StrictEnv)
	}

	r = call(t, func(tb testing.TB) { RequireCommand(tb, "sh") })
	if r.skipped != "" || r.failed != "" {
		t.Errorf("sh is installed: skipped %q, failed %q", r.skipped, r.failed)
	}
}

func TestRequireCommandNamesThePackage(t *testing.T) {
	t.Setenv(StrictEnv, "")
	t.Setenv("PATH", t.TempDir())
	r := call(t, func(tb testing.TB) { RequireCommand(tb, "iptables", "ip6tables", "systemd-analyze") })
	if want := "needs iptables, ip6tables, systemd-analyze, not found in PATH (Debian: apt-get install iptables systemd)"; r.skipped != want {
		t.Errorf("skipped %q, want %q", r.skipped, want)
	}
}

func TestRequireRoot(t *testing.T) {
	t.Setenv(StrictEnv, "")
	r := call(t, func(tb testing.TB) { RequireRoot(tb, "change iptables") })
	if os.Geteuid() == 0 {
		if r.skipped != "" || r.failed != "" {
			t.Errorf("as root: skipped %q, failed %q", r.skipped, r.failed)
		}
		return
	}
	if !strings.HasPrefix(r.skipped, "needs root to change iptables") {
		t.Errorf("as uid %d: skipped %q, failed %q", os.Geteuid(), r.skipped, r.failed)
	}
}

func TestWaitFor(t *testing.T) {
	n := 0
	r := call(t, func(tb testing.TB) { WaitFor(tb, "the third look", time.Minute, func() bool { n++; return n == 3 }) })
	if r.failed != "" || n != 3 {
		t.Errorf("failed %q after %d looks", r.failed, n)
	}
	r = call(t, func(tb testing.TB) { WaitFor(tb, "nothing", 30*time.Millisecond, func() bool { return false }) })
	if r.failed != "timed out after 30ms waiting for nothing" {
		t.Errorf("failed %q", r.failed)
	}
}

func TestRandomChain(t *testing.T) {
	a, b := RandomChain(), RandomChain()
	if len(a) != 11 || !strings.HasPrefix(a, "AGT") || a == b || strings.ToUpper(a) != a {
		t.Errorf("chains %q and %q", a, b)
	}
}

// In the namespace: only lo, up, and the variables the test passed; the
// chain made there never reaches the host.
func TestInNetns(t *testing.T) {
	RequireCommand(t, "iptables", "ip6tables")
	chain := RandomChain()
	if !InNetns(t, "ASTGUARD_TEST_CHAIN="+chain) {
		NoChainOnHost(t, chain)
		return
	}
	chain = os.Getenv("ASTGUARD_TEST_CHAIN")
	if out, err := exec.Command("ip", "-o", "link", "show", "lo").CombinedOutput(); err != nil || !strings.Contains(string(out), "UP") {
		t.Fatalf("lo is not up: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"-N", chain}, {"-A", chain, "-s", "127.0.0.2", "-j", "DROP"}, {"-I", "INPUT", "-j", chain}} {
		if out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("iptables %v: %v\n%s", args, err, out)
		}
	}
	if n := Drops(t, "iptables", chain, "127.0.0.2/32"); n != 0 {
		t.Fatalf("%d drops before any packet", n)
	}
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, "the datagram counted by the DROP rule", 10*time.Second, func() bool { return Drops(t, "iptables", chain, "127.0.0.2/32") == 1 })
}

// A child that fails fails its parent, with the child's output.
func TestInNetnsChildFailure(t *testing.T) {
	if os.Getenv("ASTGUARD_TEST_NETNS_FAIL") != "" {
		if InNetns(t) {
			t.Fatal("the failure the parent must report")
		}
		return
	}
	r := call(t, func(tb testing.TB) {
		if InNetns(tb, "ASTGUARD_TEST_NETNS_FAIL=1") {
			t.Error("InNetns returned true in the parent")
		}
	})
	if r.skipped != "" {
		Skip(t, "%s", r.skipped)
	}
	if !strings.HasPrefix(r.failed, "the test in the network namespace failed: exit status 1") ||
		!strings.Contains(r.logs.String(), "the failure the parent must report") {
		t.Errorf("parent failed %q, logged:\n%s", r.failed, r.logs.String())
	}
}
