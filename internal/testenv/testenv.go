// Package testenv lets a test say what it needs from the machine (root, a
// command such as iptables) and wait on a condition instead of sleeping.
//
// A test whose needs are not met is skipped with a message saying what is
// missing, so that `go test ./...` as an ordinary user, or on a machine
// without iptables, passes what it can and says what it left out. CI runs
// as root with every package installed and sets ASTGUARD_TEST_STRICT=1:
// there a missing need fails the test instead, so that no skip passes
// unnoticed.
//
// Tests that change iptables run in a private network namespace: see
// InNetns.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// StrictEnv names the environment variable that, set to 1, turns every
// skip of this package into a failure. .ci/run sets it.
const StrictEnv = "ASTGUARD_TEST_STRICT"

// Strict reports whether StrictEnv is set to 1.
func Strict() bool { return os.Getenv(StrictEnv) == "1" }

// Skip skips t, saying why; under StrictEnv=1 it fails t instead.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	why := fmt.Sprintf(format, args...)
	if Strict() {
		t.Fatalf("%s (%s=1: a test that cannot run fails)", why, StrictEnv)
	}
	t.Skip(why)
}

// RequireRoot skips t (fails it when strict) unless the test runs as
// root; why says what the test does with root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root to %s: run `go test` as root (uid %d here)", why, os.Geteuid())
	}
}

// packages names the Debian package of each command a test may need.
var packages = map[string]string{
	"iptables":                "iptables",
	"ip6tables":               "iptables",
	"iptables-nft":            "iptables",
	"ip6tables-nft":           "iptables",
	"iptables-legacy":         "iptables",
	"ip6tables-legacy":        "iptables",
	"ip":                      "iproute2",
	"unshare":                 "util-linux",
	"systemd-analyze":         "systemd",
	"prometheus-alertmanager": "prometheus-alertmanager",
	"mariadbd":                "mariadb-server",
	"mariadb-install-db":      "mariadb-server",
	"crowdsec":                "crowdsec",
	"cscli":                   "crowdsec",
	"ipset":                   "ipset",
	"stress-ng":               "stress-ng",
}

// RequireCommand skips t (fails it when strict) unless every one of names
// is found in PATH.
func RequireCommand(t testing.TB, names ...string) {
	t.Helper()
	var missing, pkgs []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
			if p, ok := packages[n]; ok && !slices.Contains(pkgs, p) {
				pkgs = append(pkgs, p)
			}
		}
	}
	if len(missing) == 0 {
		return
	}
	hint := ""
	if len(pkgs) > 0 {
		hint = " (Debian: apt-get install " + strings.Join(pkgs, " ") + ")"
	}
	Skip(t, "needs %s, not found in PATH%s", strings.Join(missing, ", "), hint)
}

// RequirePythonModule returns a Python 3 that imports module: python3 in
// PATH, else Debian's /usr/bin/python3 (which its python3-* packages
// serve, when another python3 comes first in PATH). It skips t (fails it
// when strict) when neither does, naming pkg, the Debian package.
func RequirePythonModule(t testing.TB, module, pkg string) string {
	t.Helper()
	for _, py := range []string{"python3", "/usr/bin/python3"} {
		if path, err := exec.LookPath(py); err == nil && exec.Command(path, "-c", "import "+module).Run() == nil {
			return path
		}
	}
	Skip(t, "needs the Python module %s, which no python3 imports (Debian: apt-get install %s)", module, pkg)
	return ""
}

// WaitFor polls cond every 10 ms until it holds, and fails t if it still
// does not after timeout. The timeout only bounds a wait for something
// that should happen: it is not a claim about speed.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// RandomChain returns a chain name no other test or program uses:
// "AGT" and 8 random hex digits.
func RandomChain() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "AGT" + strings.ToUpper(hex.EncodeToString(b))
}

// netnsEnv, in the environment of a child InNetns started, names the test
// the child is to run inside the namespace.
const netnsEnv = "ASTGUARD_TEST_NETNS"

// netnsBudget bounds one child: it is given -test.timeout of this much, or
// less if the test's own deadline comes sooner (a hung child dies with
// every goroutine's stack in its output), and killed a little later if it
// still has not ended.
const netnsBudget = 3 * time.Minute

// InNetns runs the calling test in a private network namespace, where its
// iptables changes touch nothing of the host's.
//
// Called in the test process, it checks that the machine can (root,
// unshare, ip; else it skips t, or fails it when strict), runs the test
// binary again under `unshare -n` for t's test alone with env (KEY=VALUE)
// added to its environment, logs the child's output, fails t with it if
// the child failed or did not run the test, and returns false: the caller
// returns. In that child it brings up lo, checks that lo is the only link
// (never the host's namespace), and returns true: the caller goes on with
// the body of the test.
func InNetns(t testing.TB, env ...string) bool {
	t.Helper()
	if name, ok := os.LookupEnv(netnsEnv); ok {
		if name != t.Name() {
			t.Fatalf("%s=%q in the environment, but this is %s: refusing to run a network namespace test outside its namespace", netnsEnv, name, t.Name())
		}
		links, err := exec.Command("ip", "-o", "link").CombinedOutput()
		if err != nil || strings.Count(string(links), "\n") != 1 || !strings.Contains(string(links), " lo:") {
			t.Fatalf("not in a fresh network namespace (%v):\n%s", err, links)
		}
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("ip link set lo up: %v\n%s", err, out)
		}
		return true
	}
	RequireRoot(t, "create a private network namespace (unshare -n) and change iptables inside it")
	RequireCommand(t, "unshare", "ip")

	var run []string
	for _, part := range strings.Split(t.Name(), "/") {
		run = append(run, "^"+regexp.QuoteMeta(part)+"$")
	}
	budget := netnsBudget
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			budget = max(min(budget, time.Until(dl)-10*time.Second), time.Second)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget+5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "--", os.Args[0],
		"-test.run="+strings.Join(run, "/"), "-test.v", "-test.count=1", "-test.timeout="+budget.String())
	cmd.Env = append(append(os.Environ(), netnsEnv+"="+t.Name()), env...)
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "=== ") {
			t.Log("netns| " + l)
		}
	}
	switch {
	case ctx.Err() != nil:
		t.Fatalf("the test in the network namespace was killed after %v (output above)", time.Since(start).Round(time.Second))
	case err != nil:
		t.Fatalf("the test in the network namespace failed: %v (output above)", err)
	case strings.Contains(string(out), "--- SKIP: "+t.Name()+" "):
		Skip(t, "the test in the network namespace was skipped (output above)")
	case !strings.Contains(string(out), "--- PASS: "+t.Name()+" "):
		t.Fatal("the test did not run in the network namespace (output above)")
	}
	return false
}

// Drops returns how many packets the DROP rules of chain for source src
// (as iptables prints it: "127.0.0.2/32") have counted, with bin
// (iptables or ip6tables): the rules `-s SRC ... -j DROP`, and the rules
// `-m set --match-set SET src -j DROP` whose set holds src's address
// (asked with `ipset test`). A test waits for it to grow to know that a
// datagram it sent was dropped by such a rule, rather than waiting for a
// while to see that it did not arrive.
func Drops(t testing.TB, bin, chain, src string) uint64 {
	t.Helper()
	out, err := exec.Command(bin, "-w", "-v", "-S", chain).CombinedOutput()
	if err != nil {
		t.Fatalf("%s -v -S %s: %v\n%s", bin, chain, err, out)
	}
	addr, _, _ := strings.Cut(src, "/")
	var n uint64
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if !slices.Contains(f, "DROP") {
			continue
		}
		if i := slices.Index(f, "--match-set"); i >= 0 && i+1 < len(f) {
			if exec.Command("ipset", "test", f[i+1], addr).Run() != nil {
				continue // not in the set (or no ipset): not this source's rule
			}
		} else if !strings.Contains(l, " -s "+src+" ") {
			continue
		}
		if i := slices.Index(f, "-c"); i >= 0 && i+1 < len(f) {
			var p uint64
			if _, err := fmt.Sscan(f[i+1], &p); err != nil {
				t.Fatalf("%s -v -S %s: packet count %q: %v", bin, chain, f[i+1], err)
			}
			n += p
		}
	}
	return n
}

// Banned lists what chain drops, for a test to look for an address in:
// the sources of its DROP rules (iptables and ip6tables, as `-S` prints
// them) and the members of the sets its rules match (as `ipset list`
// prints them), one a line. A missing chain or set contributes nothing.
func Banned(t testing.TB, chain string) string {
	t.Helper()
	var b strings.Builder
	for _, bin := range []string{"iptables", "ip6tables"} {
		out, err := exec.Command(bin, "-w", "-S", chain).CombinedOutput()
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if !slices.Contains(f, "DROP") {
				continue
			}
			if i := slices.Index(f, "-s"); i >= 0 && i+1 < len(f) {
				fmt.Fprintf(&b, "%s rule in %s (%s)\n", f[i+1], chain, bin)
			}
			if i := slices.Index(f, "--match-set"); i >= 0 && i+1 < len(f) {
				members, err := exec.Command("ipset", "list", f[i+1]).CombinedOutput()
				if err != nil {
					t.Fatalf("ipset list %s: %v\n%s", f[i+1], err, members)
				}
				_, m, _ := strings.Cut(string(members), "Members:\n")
				for _, e := range strings.Split(strings.TrimSpace(m), "\n") {
					if e != "" {
						fmt.Fprintf(&b, "%s in set %s\n", e, f[i+1])
					}
				}
			}
		}
	}
	return b.String()
}

// Sets returns the names of the ipset sets named after chain (CHAIN-...)
// that exist; none when ipset is not installed.
func Sets(t testing.TB, chain string) []string {
	t.Helper()
	if _, err := exec.LookPath("ipset"); err != nil {
		return nil
	}
	out, err := exec.Command("ipset", "list", "-n").CombinedOutput()
	if err != nil {
		t.Fatalf("ipset list -n: %v\n%s", err, out)
	}
	var sets []string
	for _, n := range strings.Fields(string(out)) {
		if strings.HasPrefix(n, chain+"-") {
			sets = append(sets, n)
		}
	}
	return sets
}

// NoChainOnHost fails t if chain, or a jump to it from INPUT, exists in
// the host's iptables or ip6tables, or a set named after it in the host's
// ipset: a test working in a private network namespace left the host
// alone. It looks at nothing else of the host's tables, which other
// programs may change at any time.
func NoChainOnHost(t testing.TB, chain string) {
	t.Helper()
	if sets := Sets(t, chain); len(sets) > 0 {
		t.Errorf("the host has the sets %v", sets)
	}
	for _, bin := range []string{"iptables", "ip6tables"} {
		if out, err := exec.Command(bin, "-w", "-S", chain).CombinedOutput(); err == nil {
			t.Errorf("the host's %s has chain %s:\n%s", bin, chain, out)
		}
		in, err := exec.Command(bin, "-w", "-S", "INPUT").CombinedOutput()
		if err != nil {
			t.Errorf("%s -S INPUT on the host: %v\n%s", bin, err, in)
			continue
		}
		for _, l := range strings.Split(string(in), "\n") {
			if strings.HasSuffix(l, " -j "+chain) || strings.Contains(l, " -j "+chain+" ") {
				t.Errorf("the host's %s INPUT jumps to %s: %s", bin, chain, l)
			}
		}
	}
}

// RaiseParallel lets up to n tests that called t.Parallel run at once,
// unless -test.parallel was given. Go's default is GOMAXPROCS, right for
// tests that compute; a package whose tests mostly wait on something paced
// in real time (a replayed recording, a reconnect) gains from more. Call it
// from TestMain, before m.Run.
func RaiseParallel(n int) {
	if !flag.Parsed() {
		flag.Parse()
	}
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given && n > runtime.GOMAXPROCS(0) {
		_ = flag.Set("test.parallel", strconv.Itoa(n))
	}
}
