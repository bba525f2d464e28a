// Package loadgen is a load harness for the live guard: a minimal Asterisk
// 20 AMI server on loopback that streams a synthetic PBX (many registered
// extensions making ordinary calls, security noise, and attacks at random
// moments) at a chosen event rate, built only from real Asterisk 20 frames
// (testdata/transcripts/attack-mixed.ami) with their values changed.
//
// The guard runs in a process of its own (this program run again in guard
// mode, or a guard binary) and is reached only the way a real one is: over
// AMI on loopback, through the configuration file it is given, and through
// its metrics endpoint and JSON log. The run reports the rate achieved,
// what the guard did not see, every write to the guard that blocked, each
// attack caught or missed and the reaction to it (the guard's Hangup
// action, or its ban, minus the time the generator began writing the
// event that tripped the rule), and the guard's CPU and peak memory, read
// from /proc; optionally with stress-ng competing for the CPU.
package loadgen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/metrics"
)

// Options of a run.
type Options struct {
	Rate       float64       // AMI events per second offered
	Duration   time.Duration // how long to stream
	Extensions int           // legitimate extensions (raised so none calls more than MaxCallsPerMinute)
	// MaxCallsPerMinute caps the calls of one legitimate extension (default
	// 6: well under call_rate's warning of 30 a minute).
	MaxCallsPerMinute float64
	// Attacks placed at random moments over the run; 0: the default, one
	// every 3 s of the run and at least 100, so that a p99 of the reaction
	// means something; negative: none.
	Attacks      int
	Seed         int64         // of the random placement
	SlowInterval time.Duration // between the calls of a slow hunt (default 20 s, at most Duration/8)
	// AllEvents sends every class (VarSet, Newexten, Cdr ...) whatever
	// event mask the guard asks for: a PBX whose AMI user ignores it.
	AllEvents bool
	QueueSize int // the guard's ami.queue_size (0: the default)
	// Tick is how often the generator writes (default 1 ms): the events of
	// one tick go out together, in chunks of at most 64 KiB.
	Tick time.Duration
	// Nice is given to the generator's thread and to the threads reading
	// the guard's actions (0: leave them at the process's priority). The
	// guard and stress-ng keep the default priority. cmd/loadgen uses -10,
	// as an Asterisk started with -p is above ordinary tasks.
	Nice int

	// GuardBinary, if set, is a guard binary run as `GuardBinary run
	// --config FILE`; otherwise the running program is run again in guard
	// mode (see IsGuardChild).
	GuardBinary string
	GuardLog    io.Writer // the guard's log, JSON lines (nil: discarded)
	// GuardCPUProfile and GuardHeapProfile, if set, are where the guard
	// writes a CPU profile of its whole life and a heap profile at its end
	// (guard mode only, not with GuardBinary).
	GuardCPUProfile  string
	GuardHeapProfile string

	// Stress, if > 0, runs `stress-ng --cpu Stress` during the run.
	Stress int
	// ScrapeEvery is how often the guard's metrics are read during the run
	// (default 1 s): the queue's peak is the largest depth seen then.
	ScrapeEvery time.Duration
	Goals       Goals
}

// Goals are the thresholds the report checks besides the ones that always
// apply (nothing lost or dropped, no reconnect, no write blocked past
// Asterisk's writetimeout, the rate achieved, every attack caught, no
// legitimate extension acted on). A zero value is not checked.
type Goals struct {
	ReactionP99 time.Duration
	CPUCores    float64
	PeakRSSMiB  float64
}

// DefaultGoals are the goals of the AMI connection's rewrite: reaction p99
// under 1 ms, at most 0.3 cores and under 256 MiB on a quiet machine;
// under CPU starvation (stress) a p99 under 50 ms.
func DefaultGoals(stress bool) Goals {
	if stress {
		return Goals{ReactionP99: 50 * time.Millisecond}
	}
	return Goals{ReactionP99: time.Millisecond, CPUCores: 0.3, PeakRSSMiB: 256}
}

// defaultAttacks is the number of attacks of a run of d.
func defaultAttacks(d time.Duration) int { return max(100, int(d/(3*time.Second))) }

func (o *Options) defaults() {
	if o.Rate <= 0 {
		o.Rate = 2000
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.Extensions <= 0 {
		o.Extensions = 2000
	}
	if o.MaxCallsPerMinute <= 0 {
		o.MaxCallsPerMinute = 6
	}
	switch {
	case o.Attacks == 0:
		o.Attacks = defaultAttacks(o.Duration)
	case o.Attacks < 0:
		o.Attacks = 0
	}
	if o.SlowInterval <= 0 {
		o.SlowInterval = 20 * time.Second
	}
	if o.Tick <= 0 {
		o.Tick = time.Millisecond
	}
	if o.ScrapeEvery <= 0 {
		o.ScrapeEvery = time.Second
	}
}

// AttackResult is what happened to one attack.
type AttackResult struct {
	Kind       string  `json:"kind"`
	Extension  string  `json:"extension,omitempty"`
	Address    string  `json:"address"`
	StartSec   float64 `json:"start_s"`
	Caught     bool    `json:"caught"`
	How        string  `json:"how,omitempty"`       // hangup or block_ip, whichever came first
	TripRule   string  `json:"trip_rule,omitempty"` // the rule that tripped (from the shadow detector)
	Attempts   int     `json:"attempts"`            // calls or authentication attempts sent
	CallsSent  int     `json:"calls_sent"`          // calls that got a channel
	CallsThru  int     `json:"calls_before_action"` // calls that got a channel before the generator learned of the action
	ReactionMs float64 `json:"reaction_ms"`         // first action - start of the write of the tripping frame; -1 if unknown
	HangupMs   float64 `json:"hangup_reaction_ms"`  // the Hangup's arrival - the same; -1 if none
}

// RSSSample is the guard's resident memory at a moment of the run.
type RSSSample struct {
	Sec float64 `json:"s"`
	MiB float64 `json:"mib"`
}

// Goal is one goal checked.
type Goal struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
}

// Report is the outcome of a run.
type Report struct {
	RateOffered float64 `json:"rate_target"`
	DurationSec float64 `json:"duration_s"`
	TickMs      float64 `json:"tick_ms"`
	Extensions  int     `json:"extensions"`
	LegitCalls  uint64  `json:"legit_calls"`
	Note        string  `json:"note,omitempty"`
	Guard       string  `json:"guard"` // what ran as the guard
	GuardPID    int     `json:"guard_pid"`

	EventsSent    uint64  `json:"events_sent"`
	BytesSent     uint64  `json:"bytes_sent"`
	RateSent      float64 `json:"events_per_s_sent"`
	EventsSkipped uint64  `json:"events_not_sent"` // the generator fell more than catchUp behind
	LateTicks     uint64  `json:"late_ticks"`      // ticks whose work took longer than a tick
	Writes        uint64  `json:"writes"`
	MaxWriteMs    float64 `json:"max_write_ms"`
	SlowWrites    uint64  `json:"writes_over_100ms"` // Asterisk's writetimeout: it would have dropped the session

	// Events the generator wrote that the detector uses, and how many the
	// detector counted (astguard_events_total, by type): Missing is the
	// difference, Dropped the part the queue refused
	// (astguard_events_dropped_total), the rest was lost with a connection.
	EventsWritten  uint64            `json:"events_written_detector_uses"`
	EventsSeen     uint64            `json:"events_seen_by_detector"`
	Missing        uint64            `json:"events_missing"`
	MissingByType  map[string]uint64 `json:"events_missing_by_type,omitempty"`
	Dropped        uint64            `json:"events_dropped"`
	Reconnects     uint64            `json:"reconnects"`         // logins during the run (the server's count)
	AMIConnects    uint64            `json:"ami_connects_run"`   // astguard_ami_connects_total during the run
	QueuePeak      float64           `json:"queue_peak_sampled"` // largest astguard_queue_depth seen
	QueueSize      int               `json:"queue_size"`
	DrainSec       float64           `json:"drain_s"` // after the end, until the detector had counted everything
	RateSustained  float64           `json:"events_per_s_sustained"`
	Attacks        []AttackResult    `json:"attacks"`
	Caught         int               `json:"attacks_caught"`
	Missed         int               `json:"attacks_missed"`
	Reactions      int               `json:"reactions_measured"`
	ReactionP50    float64           `json:"reaction_p50_ms"`
	ReactionP99    float64           `json:"reaction_p99_ms"`
	ReactionMax    float64           `json:"reaction_max_ms"`
	HangupP50      float64           `json:"hangup_reaction_p50_ms"`
	HangupP99      float64           `json:"hangup_reaction_p99_ms"`
	LegitActedOn   map[string]int    `json:"legit_acted_on"`
	Actions        map[string]uint64 `json:"actions"`
	GuardCPUSec    float64           `json:"guard_cpu_s"`
	GuardCPUCores  float64           `json:"guard_cpu_cores"`
	GuardUsPerEvt  float64           `json:"guard_cpu_us_per_event"` // per event sent: the guard reads every one
	GuardPeakRSS   float64           `json:"guard_peak_rss_mib"`     // VmHWM of the guard's process
	GuardRSS       []RSSSample       `json:"guard_rss"`              // VmRSS at every tenth of the run
	GuardHeapInuse float64           `json:"guard_heap_inuse_end_mib"`
	LoadgenCPUSec  float64           `json:"loadgen_cpu_s"`   // this process: generator, AMI server, scraping
	GeneratorCPU   float64           `json:"generator_cpu_s"` // the generator's thread
	GeneratorNice  string            `json:"generator_nice"`
	Stress         string            `json:"stress,omitempty"` // the stress-ng command run beside the guard
	// CPUPressurePct is the share of the run during which some runnable
	// task of the machine waited for a CPU (/proc/pressure/cpu "some").
	CPUPressurePct float64 `json:"cpu_pressure_some_pct"`
	// IOPressurePct is the same for storage (/proc/pressure/io "some"):
	// the guard writes its state file, with fsync, before it acts.
	IOPressurePct float64 `json:"io_pressure_some_pct"`
	Goals         []Goal  `json:"goals"`
}

// secret is the AMI secret of the run's guard (it guards nothing).
const secret = "loadgenpass"

// Run starts the guard, streams the load to it, and returns the report.
func Run(ctx context.Context, opts Options) (*Report, error) {
	opts.defaults()
	if opts.Attacks > maxAttacks {
		return nil, fmt.Errorf("loadgen: at most %d attacks (each has an address of its own)", maxAttacks)
	}
	if opts.GuardBinary != "" && (opts.GuardCPUProfile != "" || opts.GuardHeapProfile != "") {
		return nil, errors.New("loadgen: the guard's profiles need the guard mode, not a guard binary")
	}
	// The guard runs in a temporary directory: profiles are named from here.
	for _, p := range []*string{&opts.GuardCPUProfile, &opts.GuardHeapProfile} {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return nil, err
			}
			*p = abs
		}
	}
	tpl, err := loadTemplates()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "astguard-loadgen-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	metricsAddr, err := freeAddr()
	if err != nil {
		ln.Close()
		return nil, err
	}
	cfgPath := filepath.Join(dir, "guard.toml")
	text := guardConfig(dir, ln.Addr().String(), metricsAddr, opts.QueueSize)
	cfg, err := config.Parse([]byte(text))
	if err == nil {
		err = os.WriteFile(cfgPath, []byte(text), 0o600)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("loadgen: the guard's configuration: %w", err)
	}

	// Enough extensions that none calls more often than MaxCallsPerMinute.
	mask := classCall | classSecurity | classSystem
	if opts.AllEvents {
		mask = classAll
	}
	perCall := 0.0
	for _, f := range slices.Concat(tpl.sipCall.setup, tpl.sipCall.teardown) {
		if f.class&mask == f.class {
			perCall++
		}
	}
	perCall += 0.3 // re-registrations, every 10th call
	note := ""
	if need := int(opts.Rate/perCall*60/opts.MaxCallsPerMinute) + 1; need > opts.Extensions {
		note = fmt.Sprintf("extensions raised from %d to %d so that none makes more than %.0f calls a minute at %.0f events/s (%.1f events a call)",
			opts.Extensions, need, opts.MaxCallsPerMinute, opts.Rate, perCall)
		opts.Extensions = need
	}
	if opts.Extensions > 89999 {
		ln.Close()
		return nil, errors.New("loadgen: more than 89,999 extensions needed: lower the rate or raise --max-cpm")
	}

	gen := newGenerator(opts, tpl, cfg)
	srv := newServer(ln, cfg.AMI.Username, secret, gen, opts.Nice)
	defer srv.close()
	gen.srv = srv

	sp := newSpawner()
	defer sp.close()
	g, err := startGuard(sp, opts, cfgPath, dir, gen)
	if err != nil {
		return nil, err
	}
	defer g.stop()
	sc := newScraper(metricsAddr)
	if err := g.ready(ctx, srv, sc); err != nil {
		return nil, err
	}

	var stress *exec.Cmd
	if opts.Stress > 0 {
		if stress, err = startStress(sp, opts.Stress, opts.Duration); err != nil {
			return nil, err
		}
		defer stopGroup(stress, 5*time.Second)
	}

	s0, err := sc.scrape(ctx)
	if err != nil {
		return nil, fmt.Errorf("loadgen: the guard's metrics: %w", err)
	}
	cpu0, err := procCPU(g.pid())
	if err != nil {
		return nil, err
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	psi0, io0 := pressure("cpu"), pressure("io")
	logins0 := srv.logins.Load()
	t0 := time.Now()

	// While the generator runs: the queue's depth from the metrics, and
	// the guard's resident memory at every tenth of the run.
	stopWatch := make(chan struct{})
	type watched struct {
		queuePeak float64
		rss       []RSSSample
	}
	watchDone := make(chan watched)
	go func() {
		var w watched
		t := time.NewTicker(opts.ScrapeEvery)
		defer t.Stop()
		next := time.Duration(0)
		for {
			select {
			case <-stopWatch:
				watchDone <- w
				return
			case <-t.C:
			}
			if s, err := sc.scrape(ctx); err == nil {
				w.queuePeak = max(w.queuePeak, s.get(metrics.NameQueueDepth, "", ""))
			}
			if el := time.Since(t0); el >= next {
				if kib, err := procStatusKiB(g.pid(), "VmRSS"); err == nil {
					w.rss = append(w.rss, RSSSample{Sec: el.Seconds(), MiB: float64(kib) / 1024})
				}
				next = el.Truncate(opts.Duration/10) + opts.Duration/10
			}
		}
	}()
	genDone := make(chan struct{})
	go func() { gen.run(ctx.Done()); close(genDone) }()
	select {
	case <-genDone:
	case <-g.exited:
		close(stopWatch)
		<-watchDone
		<-genDone
		return nil, fmt.Errorf("loadgen: the guard stopped during the run:\n%s", g.lastLines())
	}
	tEnd := time.Now()

	// Let the guard take in what is in flight: until its detector counted
	// every event written, or nothing more came for 2 s.
	written := make([]uint64, len(eventLabels))
	var wsum uint64
	for i := range written {
		written[i] = gen.written[i].Load()
		wsum += written[i]
	}
	seen := func(s scrape) (uint64, []uint64) {
		per := make([]uint64, len(eventLabels))
		var n uint64
		for i, l := range eventLabels {
			d := s.get(metrics.NameEvents, "type", l) - s0.get(metrics.NameEvents, "type", l)
			per[i] = uint64(max(d, 0))
			n += per[i]
		}
		return n, per
	}
	last := s0
	var lastSeen uint64
	lastChange := time.Now()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		s, err := sc.scrape(ctx)
		if err != nil {
			break
		}
		last = s
		n, _ := seen(s)
		if n >= wsum && s.get(metrics.NameQueueDepth, "", "") == 0 {
			break
		}
		if n != lastSeen {
			lastSeen, lastChange = n, time.Now()
		} else if time.Since(lastChange) > 2*time.Second {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	tDrained := time.Now()
	// Actions in flight: until every attack was acted on, at most 1 s.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline) && !gen.allActed(); {
		time.Sleep(10 * time.Millisecond)
	}

	cpu1, err1 := procCPU(g.pid())
	hwm, err2 := procStatusKiB(g.pid(), "VmHWM")
	if err := errors.Join(err1, err2); err != nil {
		select {
		case <-g.exited:
			return nil, fmt.Errorf("loadgen: the guard stopped after the run:\n%s", g.lastLines())
		default:
			return nil, err
		}
	}
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	psi1, io1 := pressure("cpu"), pressure("io")
	close(stopWatch)
	watch := <-watchDone
	if s, err := sc.scrape(ctx); err == nil {
		last = s
	}
	if stress != nil {
		stopGroup(stress, 5*time.Second)
	}

	elapsed := tEnd.Sub(t0)
	measured := tDrained.Sub(t0)
	rep := &Report{
		RateOffered:   opts.Rate,
		DurationSec:   elapsed.Seconds(),
		TickMs:        float64(opts.Tick.Microseconds()) / 1000,
		Extensions:    opts.Extensions,
		Note:          note,
		Guard:         g.describe,
		GuardPID:      g.pid(),
		EventsSent:    gen.sent.Load(),
		BytesSent:     gen.bytes.Load(),
		EventsSkipped: gen.skipped.Load(),
		LateTicks:     gen.behindTicks.Load(),
		Writes:        gen.writes.Load(),
		MaxWriteMs:    float64(gen.maxWrite.Load()) / 1e6,
		SlowWrites:    gen.slowWrites.Load(),
		EventsWritten: wsum,
		Reconnects:    srv.logins.Load() - logins0,
		QueuePeak:     watch.queuePeak,
		GuardRSS:      watch.rss,
		QueueSize:     cfg.AMI.QueueSize,
		DrainSec:      tDrained.Sub(tEnd).Seconds(),
		Actions:       srv.actionCounts(),
		GuardCPUSec:   (cpu1 - cpu0).Seconds(),
		GuardPeakRSS:  float64(hwm) / 1024,
		LoadgenCPUSec: time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()).Seconds(),
		GeneratorCPU:  gen.genCPU.Seconds(),
	}
	rep.RateSent = float64(rep.EventsSent) / elapsed.Seconds()
	rep.GuardCPUCores = rep.GuardCPUSec / measured.Seconds()
	rep.GeneratorNice = strconv.Itoa(opts.Nice)
	if gen.niceErr != nil {
		rep.GeneratorNice = "0 (" + gen.niceErr.Error() + ")"
	}
	if stress != nil {
		rep.Stress = strings.Join(stress.Args, " ")
	}
	if psi0 >= 0 && psi1 >= 0 {
		rep.CPUPressurePct = 100 * float64(psi1-psi0) / float64(measured.Microseconds())
	}
	if io0 >= 0 && io1 >= 0 {
		rep.IOPressurePct = 100 * float64(io1-io0) / float64(measured.Microseconds())
	}
	n, per := seen(last)
	rep.EventsSeen = n
	for i, l := range eventLabels {
		if per[i] < written[i] {
			if rep.MissingByType == nil {
				rep.MissingByType = map[string]uint64{}
			}
			rep.MissingByType[l] = written[i] - per[i]
			rep.Missing += written[i] - per[i]
		}
	}
	rep.Dropped = uint64(max(last.get(metrics.NameEventsDropped, "", "")-s0.get(metrics.NameEventsDropped, "", ""), 0))
	for _, session := range []string{"events", "urgent"} {
		rep.AMIConnects += uint64(max(last.get(metrics.NameAMIConnects, "session", session)-s0.get(metrics.NameAMIConnects, "session", session), 0))
	}
	rep.GuardHeapInuse = last.get("go_memstats_heap_inuse_bytes", "", "") / (1 << 20)
	if rep.EventsSent > 0 {
		rep.GuardUsPerEvt = rep.GuardCPUSec * 1e6 / float64(rep.EventsSent)
	}
	if rep.Missing == 0 && rep.Dropped == 0 && rep.Reconnects == 0 && rep.SlowWrites == 0 && rep.EventsSkipped == 0 {
		rep.RateSustained = rep.RateSent
	}
	gen.results(rep)
	rep.Goals = checkGoals(rep, opts)
	return rep, nil
}

// guardConfig is the guard's configuration file: enforce mode, a dry-run
// firewall, its state in dir, metrics on metricsAddr, the secrets in the
// simulated Asterisk's files, the rest the defaults. The AMI secret comes from the environment.
func guardConfig(dir, amiAddr, metricsAddr string, queueSize int) string {
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "mode = \"enforce\"\n\n[ami]\naddress = %s\nusername = \"loadgen\"\nreconnect_interval = \"200ms\"\n", q(amiAddr))
	if queueSize > 0 {
		fmt.Fprintf(&b, "queue_size = %d\n", queueSize)
	}
	fmt.Fprintf(&b, "\n[log]\nlevel = \"info\"\n\n[metrics]\nlisten = %s\n", q(metricsAddr))
	fmt.Fprintf(&b, "\n[response]\nfirewall = \"dry-run\"\nstate_file = %s\nsecrets_file = %s\nadmin_socket = %s\n",
		q(filepath.Join(dir, "bans.json")), q(filepath.Join(dir, "secrets.jsonl")), q(filepath.Join(dir, "admin.sock")))
	// The synthetic Asterisk keeps its secrets in its own files: never
	// the machine's FreePBX database, which auto would pick on a FreePBX
	// box.
	b.WriteString("\n[secrets]\nstore = \"files\"\n")
	return b.String()
}

// freeAddr returns a loopback address with a port free now (the guard's
// metrics.listen takes no port 0).
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// guardProc is the guard's process.
type guardProc struct {
	cmd      *exec.Cmd
	describe string
	exited   chan struct{} // closed when the process ended
	logDone  chan struct{} // closed when its log is read to the end

	mu   sync.Mutex
	tail []string // its last log lines
}

func (g *guardProc) pid() int { return g.cmd.Process.Pid }

func startGuard(sp *spawner, opts Options, cfgPath, dir string, gen *generator) (*guardProc, error) {
	var cmd *exec.Cmd
	env := append(os.Environ(), config.SecretEnv+"="+secret)
	describe := ""
	if opts.GuardBinary != "" {
		cmd = exec.Command(opts.GuardBinary, "run", "--config", cfgPath)
		describe = opts.GuardBinary + " run"
	} else {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		args := []string{"--config", cfgPath}
		if opts.GuardCPUProfile != "" {
			args = append(args, "--cpuprofile", opts.GuardCPUProfile)
		}
		if opts.GuardHeapProfile != "" {
			args = append(args, "--heapprofile", opts.GuardHeapProfile)
		}
		cmd = exec.Command(self, args...)
		env = append(env, childEnv+"=1")
		describe = "guard mode of " + filepath.Base(self) + " (guard.Run)"
	}
	cmd.Env = env
	cmd.Dir = dir
	// A group of its own: a Ctrl-C to loadgen stops the run, and loadgen
	// then stops the guard. The guard ends if loadgen dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := sp.start(cmd); err != nil {
		return nil, fmt.Errorf("loadgen: starting the guard: %w", err)
	}
	g := &guardProc{cmd: cmd, describe: describe, exited: make(chan struct{}), logDone: make(chan struct{})}
	go g.readLog(stderr, opts.GuardLog, gen)
	go func() {
		<-g.logDone
		_ = cmd.Wait()
		close(g.exited)
	}()
	return g, nil
}

// logLine is what the run reads from the guard's log lines.
type logLine struct {
	Time    time.Time `json:"time"`
	Message string    `json:"message"`
	IP      string    `json:"ip"`
	Ext     string    `json:"ext"`
}

// readLog copies the guard's log and notes its bans: the dry-run firewall's
// "would block address" (or, with a real firewall, "address banned"), with
// the line's time.
func (g *guardProc) readLog(r io.Reader, copyTo io.Writer, gen *generator) {
	defer close(g.logDone)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if copyTo != nil {
			_, _ = copyTo.Write(append(line, '\n'))
		}
		g.mu.Lock()
		g.tail = append(g.tail, string(line))
		if len(g.tail) > 20 {
			g.tail = g.tail[1:]
		}
		g.mu.Unlock()
		var l logLine
		if json.Unmarshal(line, &l) != nil {
			continue
		}
		if l.Message != "would block address" && l.Message != "address banned" {
			continue
		}
		if a, err := netip.ParseAddr(l.IP); err == nil {
			gen.noteBan(a, l.Ext, l.Time)
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

func (g *guardProc) lastLines() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.Join(g.tail, "\n")
}

// ready waits until the guard serves its metrics and its event session set
// its event mask, at most 20 s; then, at most 3 s more, until it asked for
// the lists it reads after a login (its resync), so that the run does not
// begin while it rebuilds its view.
func (g *guardProc) ready(ctx context.Context, srv *server, sc *scraper) error {
	deadline := time.Now().Add(20 * time.Second)
	var resync time.Time
	for {
		_, err := sc.scrape(ctx)
		masked := false
		select {
		case <-srv.maskSet:
			masked = true
		default:
		}
		if err == nil && masked {
			if resync.IsZero() {
				resync = time.Now().Add(3 * time.Second)
			}
			if srv.actionCount("pjsipshowcontacts") > 0 || time.Now().After(resync) {
				return nil
			}
		}
		select {
		case <-g.exited:
			return fmt.Errorf("loadgen: the guard stopped at start-up:\n%s", g.lastLines())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("loadgen: the guard was not ready in 20 s (metrics: %v, events session masked: %v):\n%s", err, masked, g.lastLines())
		}
	}
}

// stop asks the guard to stop (SIGTERM), and kills it after 15 s.
func (g *guardProc) stop() {
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(15 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
}

// spawner starts the run's processes from one OS thread that lives until
// close. Their Pdeathsig (SIGTERM if loadgen dies) is sent when the thread
// that forked them ends, not the process: forked from any thread, a child
// would be stopped whenever Go ends that thread, as it does when a
// goroutine locked to it (the generator's) returns.
type spawner struct {
	reqs chan *exec.Cmd
	errs chan error
	quit chan struct{}
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan *exec.Cmd), errs: make(chan error), quit: make(chan struct{})}
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with close
		for {
			select {
			case cmd := <-s.reqs:
				s.errs <- cmd.Start()
			case <-s.quit:
				return
			}
		}
	}()
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	s.reqs <- cmd
	return <-s.errs
}

// close ends the thread; the processes it started must be stopped first.
func (s *spawner) close() { close(s.quit) }

// startStress starts `stress-ng --cpu n`, in a process group of its own,
// with a timeout past the run's end in case loadgen dies.
func startStress(sp *spawner, n int, d time.Duration) (*exec.Cmd, error) {
	cmd := exec.Command("stress-ng", "--cpu", strconv.Itoa(n), "--timeout", strconv.Itoa(int((d+2*time.Minute).Seconds()))+"s")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := sp.start(cmd); err != nil {
		return nil, fmt.Errorf("loadgen: starting stress-ng: %w", err)
	}
	return cmd, nil
}

// stopGroup ends a command started in a process group of its own (its
// group id is its pid): SIGTERM to the group, SIGKILL after wait. It is
// safe to call twice.
func stopGroup(cmd *exec.Cmd, wait time.Duration) {
	if cmd.ProcessState != nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// allActed reports whether every attack was acted on.
func (g *generator) allActed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, a := range g.attacks {
		if !a.acted {
			return false
		}
	}
	return true
}

// results fills in the attacks, reactions and legitimate extensions acted on.
func (g *generator) results(rep *Report) {
	g.mu.Lock()
	defer g.mu.Unlock()
	rep.LegitCalls = g.legitCalls
	var reactions, hangups []float64
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for _, a := range g.attacks {
		r := AttackResult{Kind: a.Kind, Extension: a.Extension, Address: a.Addr.String(), StartSec: a.Start.Seconds(),
			Caught: a.acted, TripRule: a.tripRule, Attempts: a.attempts, CallsSent: a.callsSent, CallsThru: a.callsAtAct,
			ReactionMs: -1, HangupMs: -1}
		if !a.acted {
			r.CallsThru = a.callsSent
			rep.Missed++
			rep.Attacks = append(rep.Attacks, r)
			continue
		}
		rep.Caught++
		at, how := a.hungupAt, "hangup"
		if at.IsZero() || (!a.bannedAt.IsZero() && a.bannedAt.Before(at)) {
			at, how = a.bannedAt, "block_ip"
		}
		r.How = how
		if !a.tripAt.IsZero() {
			r.ReactionMs = ms(at.Sub(a.tripAt))
			reactions = append(reactions, r.ReactionMs)
			if !a.hungupAt.IsZero() {
				r.HangupMs = ms(a.hungupAt.Sub(a.tripAt))
				hangups = append(hangups, r.HangupMs)
			}
		}
		rep.Attacks = append(rep.Attacks, r)
	}
	rep.Reactions = len(reactions)
	if len(reactions) > 0 {
		slices.Sort(reactions)
		rep.ReactionP50 = percentile(reactions, 0.50)
		rep.ReactionP99 = percentile(reactions, 0.99)
		rep.ReactionMax = reactions[len(reactions)-1]
	}
	if len(hangups) > 0 {
		slices.Sort(hangups)
		rep.HangupP50 = percentile(hangups, 0.50)
		rep.HangupP99 = percentile(hangups, 0.99)
	}
	rep.LegitActedOn = map[string]int{}
	for k, v := range g.legitHit {
		rep.LegitActedOn[k] = v
	}
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []float64, p float64) float64 {
	i := int(p*float64(len(sorted))+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func checkGoals(r *Report, o Options) []Goal {
	var out []Goal
	add := func(name, want, got string, met bool) { out = append(out, Goal{name, want, got, met}) }
	target := o.Rate * r.DurationSec
	add("rate achieved", fmt.Sprintf("%.0f events/s, none held back", o.Rate),
		fmt.Sprintf("%.0f events/s, %d not sent", r.RateSent, r.EventsSkipped), r.EventsSkipped == 0 && float64(r.EventsSent) >= 0.999*target)
	add("nothing dropped or lost", "0", fmt.Sprintf("%d missing (%d dropped)", r.Missing, r.Dropped), r.Missing == 0 && r.Dropped == 0)
	add("no reconnect", "0", strconv.FormatUint(r.Reconnects, 10), r.Reconnects == 0)
	add("no write blocked over 100 ms", "0", fmt.Sprintf("%d (longest %.1f ms)", r.SlowWrites, r.MaxWriteMs), r.SlowWrites == 0)
	add("every attack caught", strconv.Itoa(len(r.Attacks)), fmt.Sprintf("%d (%d missed)", r.Caught, r.Missed), r.Missed == 0)
	add("no legitimate extension acted on", "0", strconv.Itoa(len(r.LegitActedOn)), len(r.LegitActedOn) == 0)
	if g := o.Goals.ReactionP99; g > 0 {
		add("reaction p99", fmt.Sprintf("< %v over >= 100 attacks", g), fmt.Sprintf("%.3f ms over %d", r.ReactionP99, r.Reactions),
			r.Reactions >= 100 && r.Reactions == r.Caught && r.Missed == 0 && r.ReactionP99 < float64(g.Microseconds())/1000)
	}
	if g := o.Goals.CPUCores; g > 0 {
		add("guard CPU", fmt.Sprintf("<= %.2f cores", g), fmt.Sprintf("%.3f cores (%.2f µs an event)", r.GuardCPUCores, r.GuardUsPerEvt), r.GuardCPUCores <= g)
	}
	if g := o.Goals.PeakRSSMiB; g > 0 {
		add("guard peak RSS", fmt.Sprintf("< %.0f MiB", g), fmt.Sprintf("%.1f MiB", r.GuardPeakRSS), r.GuardPeakRSS < g)
	}
	return out
}

// Text writes the report for a human.
func (r *Report) Text(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	p("load:       %.0f events/s for %.1f s (writes every %.1f ms), %d legitimate extensions, %d legitimate calls", r.RateOffered, r.DurationSec, r.TickMs, r.Extensions, r.LegitCalls)
	if r.Note != "" {
		p("            (%s)", r.Note)
	}
	p("guard:      pid %d, %s", r.GuardPID, r.Guard)
	if r.Stress != "" {
		p("stress:     %s", r.Stress)
	}
	p("sent:       %d events (%.0f/s, %.1f MB) in %d writes; %d not sent (generator behind), %d late ticks", r.EventsSent, r.RateSent, float64(r.BytesSent)/1e6, r.Writes, r.EventsSkipped, r.LateTicks)
	p("writes:     longest %.1f ms, %d over 100 ms (Asterisk's writetimeout)", r.MaxWriteMs, r.SlowWrites)
	p("detector:   %d of %d events it uses seen, %d missing (%d dropped by the full queue), %v", r.EventsSeen, r.EventsWritten, r.Missing, r.Dropped, r.MissingByType)
	p("            %d reconnects (%d AMI connects counted by the guard); queue peak %.0f of %d (sampled); drained %.2f s after the end", r.Reconnects, r.AMIConnects, r.QueuePeak, r.QueueSize, r.DrainSec)
	if r.RateSustained > 0 {
		p("sustained:  %.0f events/s with nothing lost", r.RateSustained)
	} else {
		p("sustained:  NO")
	}
	p("attacks:    %d caught, %d missed", r.Caught, r.Missed)
	for _, a := range r.Attacks {
		who := a.Extension
		if who == "" {
			who = a.Address
		}
		status := "MISSED"
		if a.Caught {
			status = "caught by " + a.How
		}
		react := "n/a"
		if a.ReactionMs >= 0 {
			react = fmt.Sprintf("%.3f ms", a.ReactionMs)
		}
		p("  %-12s %-11s at %6.1f s: %-18s rule %-14s attempts %3d, calls before action %3d, reaction %s",
			a.Kind, who, a.StartSec, status, a.TripRule, a.Attempts, a.CallsThru, react)
	}
	p("reaction:   p50 %.3f ms, p99 %.3f ms, max %.3f ms over %d attacks (first action - start of the write of the tripping frame)", r.ReactionP50, r.ReactionP99, r.ReactionMax, r.Reactions)
	p("            Hangup alone: p50 %.3f ms, p99 %.3f ms", r.HangupP50, r.HangupP99)
	if len(r.LegitActedOn) == 0 {
		p("legitimate: none acted on")
	} else {
		p("legitimate: ACTED ON %v", r.LegitActedOn)
	}
	p("guard cpu:  %.2f s = %.3f cores, %.2f µs an event", r.GuardCPUSec, r.GuardCPUCores, r.GuardUsPerEvt)
	p("guard mem:  peak RSS %.1f MiB (VmHWM), Go heap in use at the end %.1f MiB", r.GuardPeakRSS, r.GuardHeapInuse)
	if len(r.GuardRSS) > 0 {
		parts := make([]string, 0, len(r.GuardRSS))
		for _, s := range r.GuardRSS {
			parts = append(parts, fmt.Sprintf("%.0fs %.0f", s.Sec, s.MiB))
		}
		p("            RSS over the run (MiB): %s", strings.Join(parts, ", "))
	}
	p("loadgen:    %.2f s CPU (generator thread %.2f s, nice %s)", r.LoadgenCPUSec, r.GeneratorCPU, r.GeneratorNice)
	p("machine:    a runnable task waited for a CPU %.0f%% of the run (/proc/pressure/cpu some), a task for storage %.0f%% (/proc/pressure/io some)",
		r.CPUPressurePct, r.IOPressurePct)
	keys := make([]string, 0, len(r.Actions))
	for k := range r.Actions {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.Actions[k]))
	}
	p("actions:    %s", strings.Join(parts, " "))
	p("goals:")
	for _, g := range r.Goals {
		met := "MET"
		if !g.Met {
			met = "NOT MET"
		}
		p("  %-7s %-32s want %s, got %s", met, g.Name, g.Want, g.Got)
	}
}
