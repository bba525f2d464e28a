// Command banbench measures the guard's bans at scale with the real
// firewall, in a private network namespace of its own (it re-runs itself
// under `unshare -n`: the host's tables and sets are never touched). It
// needs root, iptables, ipset, iproute2, util-linux (unshare, nsenter) and,
// for the packet test, iperf3.
//
// It reports, for kernel address sets (IPSet) and for one rule per ban
// (IPTables, at a smaller size: the per-rule chain slows down with every
// ban), through bans.Manager as the guard runs it (journal synced,
// conntrack entries deleted):
//
//   - the time to apply a burst of bans (BanMany, one group commit), from
//     many goroutines at once (Ban), and to restore them all at a start
//     after a reboot emptied the kernel;
//
//   - the latency of one new ban, from Ban to the entry in the kernel with
//     its state durable, with few bans and with all of them;
//
//   - the cost for every packet: iperf3 UDP of small datagrams over a veth
//     pair from a second namespace, received packets per second with no
//     guard chain, with the sets empty and full, and with the per-rule
//     chain at a tenth of its size and full; the cases take turns, round after round,
//     each compared with the run without a chain of its round.
//
//     go build -o /tmp/banbench ./cmd/banbench && sudo /tmp/banbench
//     sudo /tmp/banbench --bans 100000 --rules 10000 --seconds 5 --repeat 3
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
)

// netnsEnv, set in the environment of the re-run, says it runs in its own
// network namespace.
const netnsEnv = "BANBENCH_NETNS"

// chain is the chain (and the sets' prefix) the benchmark uses.
const chain = "BANBENCH"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

type options struct {
	bans, rules, single int
	seconds, repeat     int
	length              int
	timings, packets    bool
	cpuprofile          string
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("banbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.IntVar(&o.bans, "bans", 100000, "bans in the kernel address sets")
	fs.IntVar(&o.rules, "rules", 10000, "bans as one iptables rule each (slow beyond some 10,000)")
	fs.IntVar(&o.single, "single", 1000, "single bans timed one after the other")
	fs.IntVar(&o.seconds, "seconds", 3, "seconds of each iperf3 run")
	fs.IntVar(&o.repeat, "repeat", 5, "rounds of iperf3 runs, one run of each case a round (medians are reported)")
	fs.IntVar(&o.length, "length", 64, "UDP payload bytes of iperf3")
	fs.BoolVar(&o.timings, "timings", true, "measure the time of bans")
	fs.BoolVar(&o.packets, "packets", true, "measure the packet cost with iperf3")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the timing cases to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if os.Getenv(netnsEnv) == "" {
		if os.Geteuid() != 0 {
			fmt.Fprintln(stderr, "banbench: needs root (a network namespace, iptables, ipset)")
			return 1
		}
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(stderr, "banbench:", err)
			return 1
		}
		cmd := exec.Command("unshare", append([]string{"-n", "--", self}, args...)...)
		cmd.Env = append(os.Environ(), netnsEnv+"=1")
		cmd.Stdout, cmd.Stderr = stdout, stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(stderr, "banbench:", err)
			return 1
		}
		return 0
	}
	b := &bench{o: o, out: stdout, log: zerolog.New(stderr).Level(zerolog.ErrorLevel)}
	if err := b.all(); err != nil {
		fmt.Fprintln(stderr, "banbench:", err)
		return 1
	}
	return 0
}

type bench struct {
	o   options
	out io.Writer
	log zerolog.Logger
	dir string
}

func (b *bench) printf(format string, args ...any) { fmt.Fprintf(b.out, format, args...) }

func (b *bench) all() error {
	if err := sh("ip", "link", "set", "lo", "up"); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "banbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b.dir = dir
	kernel, _ := exec.Command("uname", "-r").Output()
	ipt, _ := exec.Command("iptables", "--version").Output()
	b.printf("kernel %s, %s, %d CPUs\n\n", strings.TrimSpace(string(kernel)), strings.TrimSpace(string(ipt)), numCPU())

	sets, err := firewall.NewIPSet(b.fwOptions())
	if err != nil {
		return err
	}
	rules, err := firewall.NewIPTables(b.fwOptions())
	if err != nil {
		return err
	}
	if b.o.cpuprofile != "" {
		f, err := os.Create(b.o.cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if b.o.timings {
		b.printf("| firewall | bans | what | time |\n|---|---|---|---|\n")
		if err := b.scale("sets", sets, b.o.bans); err != nil {
			return err
		}
		if err := b.scale("rules", rules, b.o.rules); err != nil {
			return err
		}
	}
	if err := sets.Teardown(context.Background()); err != nil {
		return err
	}
	if err := rules.Teardown(context.Background()); err != nil {
		return err
	}
	if b.o.packets {
		b.printf("\n")
		return b.packets()
	}
	return nil
}

func (b *bench) fwOptions() firewall.Options {
	return firewall.Options{Chain: chain, KeepRulesOnSetup: true, Logger: b.log}
}

// manager starts a bans manager over fw with a state file of its own
// (fresh: a new file), and runs it (expiry, the periodic check, folding
// the journal in) until it is closed.
func (b *bench) manager(fw firewall.Firewall, name string, fresh bool) (*bans.Manager, error) {
	path := filepath.Join(b.dir, name, "bans.json")
	if fresh {
		_ = os.RemoveAll(filepath.Dir(path))
	}
	m, err := bans.New(bans.Options{Firewall: fw, StatePath: path, IPv6Prefix: 64, Logger: b.log})
	if err != nil {
		return nil, err
	}
	if err := m.Start(context.Background()); err != nil {
		return nil, err
	}
	go func() { _ = m.Run(context.Background()) }() // as the guard runs it; Close stops it
	return m, nil
}

// addr is the i-th banned address: 100.64.0.0/10 onwards, never the
// sender's.
func addr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
}

func requests(from, n int) []bans.Request {
	reqs := make([]bans.Request, n)
	for i := range reqs {
		reqs[i] = bans.Request{Addr: addr(from + i), TTL: 24 * time.Hour, Reason: "auth_failures critical: 5 failed authentications in 1m", Rule: "auth_failures"}
	}
	return reqs
}

// scale runs the timing cases of one firewall with n bans and leaves its
// n bans applied.
func (b *bench) scale(name string, fw firewall.Firewall, n int) error {
	ctx := context.Background()
	row := func(what string, d time.Duration) {
		b.printf("| %s | %d | %s | %s |\n", name, n, what, d.Round(time.Microsecond))
	}
	// timed runs f and reports its wall time and the CPU time of this
	// process meanwhile (the kernel's netlink work included).
	timed := func(what string, f func() error) error {
		cpu, start := cpuTime(), time.Now()
		if err := f(); err != nil {
			return err
		}
		b.printf("| %s | %d | %s | %s (CPU %s) |\n", name, n, what, time.Since(start).Round(time.Millisecond), (cpuTime() - cpu).Round(time.Millisecond))
		return nil
	}
	if err := fw.Teardown(ctx); err != nil {
		return err
	}

	// A few bans: the latency of one.
	m, err := b.manager(fw, name+"-single", true)
	if err != nil {
		return err
	}
	lat, err := singles(m, 10_000_000, b.o.single)
	if err != nil {
		return err
	}
	row(fmt.Sprintf("one new ban, from 0 to %d bans: median", b.o.single), lat[len(lat)/2])
	row(fmt.Sprintf("one new ban, from 0 to %d bans: 99th percentile", b.o.single), lat[len(lat)*99/100])
	if err := m.Close(ctx); err != nil {
		return err
	}
	if err := fw.Teardown(ctx); err != nil {
		return err
	}

	// n bans from many goroutines at once: the group commit at work.
	m, err = b.manager(fw, name+"-concurrent", true)
	if err != nil {
		return err
	}
	workers := min(1000, n)
	err = timed(fmt.Sprintf("%d bans from %d goroutines at once (Ban)", n, workers), func() error {
		var wg sync.WaitGroup
		errc := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for i := w; i < n; i += workers {
					if _, err := m.Ban(ctx, bans.Request{Addr: addr(i), TTL: 24 * time.Hour, Reason: "concurrent"}); err != nil {
						errc <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errc)
		return <-errc
	})
	if err != nil {
		return err
	}
	if err := check(fw, n); err != nil {
		return err
	}
	if err := m.Close(ctx); err != nil {
		return err
	}
	if err := fw.Teardown(ctx); err != nil {
		return err
	}

	// n bans in one call.
	m, err = b.manager(fw, name, true)
	if err != nil {
		return err
	}
	reqs := requests(0, n)
	err = timed(fmt.Sprintf("%d bans at once (BanMany)", n), func() error {
		for _, r := range m.BanMany(ctx, reqs) {
			if r.Err != nil {
				return r.Err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := check(fw, n); err != nil {
		return err
	}
	lat, err = singles(m, 10_000_000, min(b.o.single, 200))
	if err != nil {
		return err
	}
	row(fmt.Sprintf("one new ban at %d bans: median", n), lat[len(lat)/2])
	row(fmt.Sprintf("one new ban at %d bans: 99th percentile", n), lat[len(lat)*99/100])
	if err := timed("stop (the journal folded into the state file)", func() error { return m.Close(ctx) }); err != nil {
		return err
	}

	// A reboot empties the kernel; the next start restores every ban.
	if err := fw.Teardown(ctx); err != nil {
		return err
	}
	err = timed("start after a reboot: every ban read and applied", func() error {
		m, err = b.manager(fw, name, false)
		return err
	})
	if err != nil {
		return err
	}
	if err := check(fw, n+min(b.o.single, 200)); err != nil {
		return err
	}
	// Back to n bans for the packet test.
	for i := range min(b.o.single, 200) {
		if err := m.Unban(ctx, addr(10_000_000+i)); err != nil {
			return err
		}
	}
	return m.Close(ctx)
}

// singles bans n new addresses one after the other, from from on, and
// returns the latencies, sorted.
func singles(m *bans.Manager, from, n int) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, n)
	for i := range n {
		start := time.Now()
		if _, err := m.Ban(context.Background(), bans.Request{Addr: addr(from + i), TTL: time.Hour, Reason: "single"}); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	return lat, nil
}

// check makes sure the firewall drops n prefixes.
func check(fw firewall.Firewall, n int) error {
	got, err := fw.Blocked(context.Background())
	if err != nil {
		return err
	}
	if len(got) != n {
		return fmt.Errorf("the firewall drops %d prefixes, want %d", len(got), n)
	}
	return nil
}

// packets measures received UDP packets per second over a veth pair from
// a second namespace. The firewalls are filled once, each in a chain of
// its own, and a run hooks one chain into INPUT (or none): the cases take
// turns, round after round, and each is compared with the run without a
// chain of the same round, so that a machine busy with other work skews
// the ratios less than the rates.
func (b *bench) packets() error {
	ctx := context.Background()
	type fwCase struct {
		name  string
		chain string // "": no chain hooked
		fw    firewall.Firewall
		bans  int
	}
	opts := func(chain string) firewall.Options {
		return firewall.Options{Chain: chain, KeepRulesOnSetup: true, DisableConntrack: true, Logger: b.log}
	}
	empty, err := firewall.NewIPSet(opts("BBEMPTY"))
	if err != nil {
		return err
	}
	sets, err := firewall.NewIPSet(opts("BBSETS"))
	if err != nil {
		return err
	}
	small, err := firewall.NewIPTables(opts("BBRSMALL"))
	if err != nil {
		return err
	}
	rules, err := firewall.NewIPTables(opts("BBRULES"))
	if err != nil {
		return err
	}
	cases := []fwCase{
		{name: "no guard chain"},
		{name: "sets", chain: "BBEMPTY", fw: empty},
		{name: "sets", chain: "BBSETS", fw: sets, bans: b.o.bans},
		{name: "rules", chain: "BBRSMALL", fw: small, bans: b.o.rules / 10},
		{name: "rules", chain: "BBRULES", fw: rules, bans: b.o.rules},
	}
	for _, c := range cases[1:] {
		if err := c.fw.Setup(ctx); err != nil {
			return err
		}
		entries := make([]firewall.Entry, c.bans)
		for i := range entries {
			entries[i] = firewall.Entry{Prefix: netip.PrefixFrom(addr(i), 32), Timeout: time.Hour, Comment: "banbench"}
		}
		if err := c.fw.Block(ctx, entries...); err != nil {
			return err
		}
		if err := check(c.fw, c.bans); err != nil {
			return err
		}
		if err := sh("iptables", "-D", "INPUT", "-j", c.chain); err != nil {
			return err
		}
		defer c.fw.Teardown(ctx)
	}

	peer, stop, err := veth()
	if err != nil {
		return err
	}
	defer stop()
	server := exec.Command("iperf3", "-s", "-B", "10.99.0.1")
	server.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := server.Start(); err != nil {
		return fmt.Errorf("iperf3 -s: %w", err)
	}
	defer func() { _ = server.Process.Kill(); _ = server.Wait() }()
	if err := waitListening(peer); err != nil {
		return err
	}

	pressure := cpuPressure()
	pps := make([][]float64, len(cases))
	lost := make([][]float64, len(cases))
	ratio := make([][]float64, len(cases))
	for r := range b.o.repeat {
		round := make([]float64, len(cases))
		for k := range cases {
			i := (k + r) % len(cases) // each case first in turn
			c := cases[i]
			if c.chain != "" {
				if err := sh("iptables", "-I", "INPUT", "1", "-j", c.chain); err != nil {
					return err
				}
			}
			p, l, err := iperf(peer, b.o.seconds, b.o.length)
			if c.chain != "" {
				if err := sh("iptables", "-D", "INPUT", "-j", c.chain); err != nil {
					return err
				}
			}
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			round[i] = p
			pps[i], lost[i] = append(pps[i], p), append(lost[i], l)
		}
		for i := range cases {
			ratio[i] = append(ratio[i], round[i]/round[0])
		}
	}
	b.printf("iperf3 UDP, %d-byte datagrams, unlimited rate, %d s per run, %d rounds; CPU pressure of the machine (some, avg60) %s at the start, %s at the end\n\n",
		b.o.length, b.o.seconds, b.o.repeat, pressure, cpuPressure())
	b.printf("| firewall | bans | received packets/s (median) | to no chain, same round (median, min to max) | lost (median) |\n|---|---|---|---|---|\n")
	for i, c := range cases {
		b.printf("| %s | %d | %.0f | %.2f (%.2f to %.2f) | %.1f %% |\n", c.name, c.bans, median(pps[i]), median(ratio[i]),
			slices.Min(ratio[i]), slices.Max(ratio[i]), median(lost[i]))
	}
	return nil
}

// cpuPressure is the share of the last minute some runnable task of the
// machine waited for a CPU (/proc/pressure/cpu), or "unknown".
func cpuPressure() string {
	data, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return "unknown"
	}
	for _, f := range strings.Fields(string(data)) {
		if v, ok := strings.CutPrefix(f, "avg60="); ok {
			return v + " %"
		}
	}
	return "unknown"
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// veth makes a veth pair: vb0 (10.99.0.1) here, vb1 (10.99.0.2) in a
// second namespace held by a sleeping child. It returns the child's pid
// (for nsenter) and a function that removes all of it.
func veth() (int, func(), error) {
	child := exec.Command("unshare", "-n", "--", "sleep", "3600")
	child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := child.Start(); err != nil {
		return 0, nil, fmt.Errorf("unshare -n sleep: %w", err)
	}
	stop := func() {
		_ = child.Process.Kill()
		_ = child.Wait()
		_ = sh("ip", "link", "del", "vb0")
	}
	pid := child.Process.Pid
	// unshare execs sleep once the namespace is made: wait for that.
	deadline := time.Now().Add(5 * time.Second)
	for {
		self, _ := os.Readlink("/proc/self/ns/net")
		its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); its != "" && its != self && strings.HasSuffix(exe, "sleep") {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return 0, nil, errors.New("the sender's namespace did not come up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p := fmt.Sprint(pid)
	for _, c := range [][]string{
		{"ip", "link", "add", "vb0", "type", "veth", "peer", "name", "vb1"},
		{"ip", "link", "set", "vb1", "netns", p},
		{"ip", "addr", "add", "10.99.0.1/24", "dev", "vb0"},
		{"ip", "link", "set", "vb0", "up"},
		{"nsenter", "-t", p, "-n", "ip", "addr", "add", "10.99.0.2/24", "dev", "vb1"},
		{"nsenter", "-t", p, "-n", "ip", "link", "set", "vb1", "up"},
		{"nsenter", "-t", p, "-n", "ip", "link", "set", "lo", "up"},
	} {
		if err := sh(c[0], c[1:]...); err != nil {
			stop()
			return 0, nil, err
		}
	}
	return pid, stop, nil
}

// waitListening waits until iperf3 answers from the sender's side.
func waitListening(peer int) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := exec.Command("nsenter", "-t", fmt.Sprint(peer), "-n", "iperf3", "-c", "10.99.0.1", "-t", "1", "-u", "-b", "1M").Run()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("iperf3 server not reachable: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// iperf runs the UDP client from the sender's namespace and returns the
// packets per second the server received and the share lost.
func iperf(peer, seconds, length int) (pps, lost float64, err error) {
	out, err := exec.Command("nsenter", "-t", fmt.Sprint(peer), "-n", "iperf3", "-c", "10.99.0.1", "-u", "-b", "0",
		"-l", fmt.Sprint(length), "-t", fmt.Sprint(seconds), "-J").Output()
	if err != nil {
		return 0, 0, fmt.Errorf("iperf3 -c: %w: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				Seconds     float64 `json:"seconds"`
				Packets     float64 `json:"packets"`
				LostPackets float64 `json:"lost_packets"`
				LostPercent float64 `json:"lost_percent"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, 0, fmt.Errorf("iperf3 output: %w", err)
	}
	r := res.End.SumReceived
	if r.Seconds == 0 {
		return 0, 0, fmt.Errorf("iperf3 reported nothing received: %s", out)
	}
	return (r.Packets - r.LostPackets) / r.Seconds, r.LostPercent, nil
}

func sh(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func numCPU() int {
	data, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(data), "processor\t:")
}
