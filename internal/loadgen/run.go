// Package loadgen is a load generator for the live guard: a minimal
// Asterisk 20 AMI server on loopback that streams a synthetic PBX (many
// registered extensions making ordinary calls, security noise, and attacks
// at random moments) at a chosen event rate, built only from real Asterisk
// 20 frames (testdata/transcripts/attack-mixed.ami) with their values
// changed. It runs the guard in the same process (enforce mode, dry-run
// firewall) and reports the rate sustained, the drops, the attacks caught
// and missed, the calls each attack got through, the reaction time (the
// guard's Hangup action's arrival minus the send time of the event that
// tripped its rule), and the guard's CPU and peak memory.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/guard"
)

// Options of a run.
type Options struct {
	Rate       float64       // AMI events per second offered
	Duration   time.Duration // how long to stream
	Extensions int           // legitimate extensions (raised so none calls more than MaxCallsPerMinute)
	// MaxCallsPerMinute caps the calls of one legitimate extension (default
	// 6: well under call_rate's warning of 30 a minute).
	MaxCallsPerMinute float64
	Attacks           int           // attacks placed at random moments
	Seed              int64         // of the random placement
	SlowInterval      time.Duration // between the calls of a slow hunt (default 20 s, at most Duration/8)
	// AllEvents sends every class (VarSet, Newexten, Cdr ...) whatever the
	// guard's Events action asks: a PBX whose AMI user ignores the mask.
	AllEvents  bool
	QueueSize  int       // the guard's ami.queue_size (0: the default)
	GuardLog   io.Writer // the guard's log (nil: discarded)
	CPUProfile string    // write a pprof CPU profile of the run here
	// StallDump, if set, gets every goroutine's stack the first time a
	// write to the guard blocks for more than 500 ms.
	StallDump string
}

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
	if o.Attacks < 0 {
		o.Attacks = 0
	}
	if o.SlowInterval <= 0 {
		o.SlowInterval = 20 * time.Second
	}
}

// AttackResult is what happened to one attack.
type AttackResult struct {
	Kind       string  `json:"kind"`
	Extension  string  `json:"extension,omitempty"`
	Address    string  `json:"address"`
	StartSec   float64 `json:"start_s"`
	Caught     bool    `json:"caught"`
	How        string  `json:"how,omitempty"`       // hangup or block_ip
	TripRule   string  `json:"trip_rule,omitempty"` // the rule that tripped (from the shadow detector)
	Attempts   int     `json:"attempts"`            // calls or authentication attempts sent
	CallsSent  int     `json:"calls_sent"`          // calls that got a channel
	CallsThru  int     `json:"calls_before_action"` // calls that got a channel before the guard acted
	ReactionMs float64 `json:"reaction_ms"`         // action arrival - send time of the tripping event; -1 if unknown
}

// Report is the outcome of a run.
type Report struct {
	RateOffered     float64           `json:"rate_target"`
	DurationSec     float64           `json:"duration_s"`
	Extensions      int               `json:"extensions"`
	EventsSent      uint64            `json:"events_sent"`
	BytesSent       uint64            `json:"bytes_sent"`
	RateSent        float64           `json:"events_per_s_sent"`
	GuardReceived   uint64            `json:"guard_received"` // events the guard's event session read (its events less those in action replies)
	GuardLost       uint64            `json:"guard_lost"`     // sent but never read by the guard (lost with a dropped connection)
	Reconnects      int               `json:"reconnects"`     // logins beyond the guard's two sessions
	GuardQueued     uint64            `json:"guard_queued"`
	GuardDropped    uint64            `json:"guard_dropped"`
	MaxQueue        int               `json:"max_queue_len"`
	QueueSize       int               `json:"queue_size"`
	RateSustained   float64           `json:"events_per_s_sustained"` // sent rate if nothing dropped and the guard kept up, else 0
	DrainSec        float64           `json:"drain_s"`                // time after the end for the guard to read the rest
	LateTicks       uint64            `json:"late_ticks"`             // 10 ms ticks the generator overran
	MaxWriteMs      float64           `json:"max_write_ms"`           // longest blocked write (Asterisk drops a client after writetimeout, 100 ms by default)
	SlowWrites      uint64            `json:"writes_over_100ms"`
	LegitCalls      uint64            `json:"legit_calls"`
	Attacks         []AttackResult    `json:"attacks"`
	Caught          int               `json:"attacks_caught"`
	Missed          int               `json:"attacks_missed"`
	ReactionP50     float64           `json:"reaction_p50_ms"`
	ReactionP99     float64           `json:"reaction_p99_ms"`
	ReactionMax     float64           `json:"reaction_max_ms"`
	LegitActedOn    map[string]int    `json:"legit_acted_on"`
	ProcessCPUSec   float64           `json:"process_cpu_s"`
	GeneratorCPUSec float64           `json:"generator_cpu_s"`
	GuardCPUSec     float64           `json:"guard_cpu_s"` // process - the generator's thread
	GuardCPUCores   float64           `json:"guard_cpu_cores"`
	PeakRSSMiB      float64           `json:"peak_rss_mib"` // VmHWM of the process (guard and generator)
	GoHeapMiB       float64           `json:"go_heap_end_mib"`
	Actions         map[string]uint64 `json:"actions"`
	CPUProfile      string            `json:"cpu_profile,omitempty"`
	// CPUPressurePct is the share of the run during which some runnable
	// task of the machine waited for a CPU (/proc/pressure/cpu "some"):
	// other work on the machine competing with the guard.
	CPUPressurePct    float64 `json:"cpu_pressure_some_pct"`
	EventsSkipped     uint64  `json:"events_not_sent"` // the guard was not reading, or the generator was not scheduled
	EventsPerCallNote string  `json:"note,omitempty"`
}

// Run runs the guard against the generator and returns the report.
func Run(ctx context.Context, opts Options) (*Report, error) {
	opts.defaults()
	tpl, err := loadTemplates()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "astguard-loadgen-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	cfg := config.Default()
	cfg.Mode = config.ModeEnforce
	cfg.AMI.Secret = "loadgenpass"
	cfg.AMI.ReconnectInterval = config.Duration(200 * time.Millisecond)
	if opts.QueueSize > 0 {
		cfg.AMI.QueueSize = opts.QueueSize
	}
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.Response.Firewall = config.FirewallDryRun

	// Enough extensions that none calls more often than MaxCallsPerMinute.
	mask := classCall | classSecurity | classSystem
	if opts.AllEvents {
		mask = classAll
	}
	perCall := 0.0
	for _, f := range tpl.sipCall.setup {
		if f.class&mask == f.class {
			perCall++
		}
	}
	for _, f := range tpl.sipCall.teardown {
		if f.class&mask == f.class {
			perCall++
		}
	}
	perCall += 0.3 // re-registrations, every 10th call
	need := int(opts.Rate/perCall*60/opts.MaxCallsPerMinute) + 1
	note := ""
	if need > opts.Extensions {
		note = fmt.Sprintf("extensions raised from %d to %d so that none makes more than %.0f calls a minute at %.0f events/s (%.1f events a call)",
			opts.Extensions, need, opts.MaxCallsPerMinute, opts.Rate, perCall)
		opts.Extensions = need
	}
	if opts.Extensions > 89999 {
		return nil, errors.New("loadgen: more than 89,999 extensions needed: lower the rate or raise --max-cpm")
	}

	gen := newGenerator(opts, tpl, cfg)
	srv, err := newServer(cfg.AMI.Username, cfg.AMI.Secret.Reveal(), gen)
	if err != nil {
		return nil, err
	}
	defer srv.close()
	gen.srv = srv
	cfg.AMI.Address = srv.addr()

	w := opts.GuardLog
	if w == nil {
		w = io.Discard
	}
	log := zerolog.New(w).With().Timestamp().Logger().Level(zerolog.InfoLevel)
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	started := make(chan *guard.Guard, 1)
	done := make(chan error, 1)
	go func() {
		done <- guard.Run(gctx, guard.Options{Config: cfg, Logger: log, Started: func(g *guard.Guard) { started <- g }})
	}()
	var g *guard.Guard
	select {
	case g = <-started:
	case err := <-done:
		return nil, fmt.Errorf("the guard stopped: %v", err)
	case <-time.After(10 * time.Second):
		return nil, errors.New("the guard did not start")
	}
	select {
	case <-srv.maskSet:
	case <-time.After(10 * time.Second):
		return nil, errors.New("the guard's event session did not log in")
	}
	time.Sleep(300 * time.Millisecond) // its resync (CoreShowChannels ...)

	if opts.CPUProfile != "" {
		f, err := os.Create(opts.CPUProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	psi0 := cpuPressure()
	stats0 := g.SessionStats()
	replies0 := srv.repliesToEventSessions()
	t0 := time.Now()

	// Watch the queue and the bans while the generator runs.
	stopWatch := make(chan struct{})
	watchDone := make(chan int)
	go func() {
		maxQ := 0
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			if q := g.QueueLen(); q > maxQ {
				maxQ = q
			}
			for _, b := range g.Bans().List() {
				gen.noteBan(b.Prefix.Addr(), b.Extension, b.Since)
			}
			select {
			case <-stopWatch:
				watchDone <- maxQ
				return
			case <-t.C:
			}
		}
	}()

	if opts.StallDump != "" {
		go func() {
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stopWatch:
					return
				case <-t.C:
				}
				if w := gen.writing.Load(); w != 0 && time.Since(time.Unix(0, w)) > 500*time.Millisecond {
					if f, err := os.Create(opts.StallDump); err == nil {
						_ = pprof.Lookup("goroutine").WriteTo(f, 2)
						f.Close()
					}
					return
				}
			}
		}()
	}
	genDone := make(chan struct{})
	go func() { gen.run(gctx.Done()); close(genDone) }()
	select {
	case <-genDone:
	case err := <-done:
		close(stopWatch)
		<-watchDone
		return nil, fmt.Errorf("the guard stopped during the run: %v", err)
	}
	tEnd := time.Now()
	sent := gen.sent.Load()
	// Let the guard read what is in flight: until its queue is empty and
	// it received as many messages as it had before plus what was sent.
	drainDeadline := time.Now().Add(30 * time.Second)
	var lastRecv uint64
	lastChange := time.Now()
	for time.Now().Before(drainDeadline) {
		st := g.SessionStats()
		if g.QueueLen() == 0 && st.Received-stats0.Received-(srv.repliesToEventSessions()-replies0) >= sent {
			break
		}
		// Nothing more coming (events lost with a dropped connection).
		if st.Received != lastRecv {
			lastRecv, lastChange = st.Received, time.Now()
		} else if g.QueueLen() == 0 && time.Since(lastChange) > 2*time.Second {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	drain := time.Since(tEnd)
	time.Sleep(time.Second) // late actions
	if opts.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	psi1 := cpuPressure()
	close(stopWatch)
	maxQ := <-watchDone
	st := g.SessionStats()
	elapsed := tEnd.Sub(t0)

	rep := &Report{
		RateOffered:       opts.Rate,
		DurationSec:       elapsed.Seconds(),
		Extensions:        opts.Extensions,
		EventsSent:        sent,
		BytesSent:         gen.bytes.Load(),
		RateSent:          float64(sent) / elapsed.Seconds(),
		GuardReceived:     st.Received - stats0.Received - (srv.repliesToEventSessions() - replies0),
		GuardQueued:       st.Queued - stats0.Queued,
		GuardDropped:      st.Dropped - stats0.Dropped,
		MaxQueue:          maxQ,
		QueueSize:         cfg.AMI.QueueSize,
		DrainSec:          drain.Seconds(),
		LateTicks:         gen.behindTicks.Load(),
		EventsSkipped:     gen.skipped.Load(),
		MaxWriteMs:        float64(gen.maxWrite.Load()) / 1e6,
		SlowWrites:        gen.slowWrites.Load(),
		LegitCalls:        gen.legitCalls,
		Actions:           srv.actionCounts(),
		CPUProfile:        opts.CPUProfile,
		EventsPerCallNote: note,
	}
	if rep.GuardReceived < sent {
		rep.GuardLost = sent - rep.GuardReceived
	}
	rep.Reconnects = max(0, int(rep.Actions["login"])-2)
	if rep.GuardDropped == 0 && rep.GuardLost == 0 && rep.Reconnects == 0 && drain < time.Second && rep.EventsSkipped == 0 && rep.SlowWrites == 0 {
		rep.RateSustained = rep.RateSent
	}
	cpu := func(r *syscall.Rusage) time.Duration {
		return time.Duration(r.Utime.Nano() + r.Stime.Nano())
	}
	rep.ProcessCPUSec = (cpu(&ru1) - cpu(&ru0)).Seconds()
	rep.GeneratorCPUSec = gen.genCPU.Seconds()
	rep.GuardCPUSec = rep.ProcessCPUSec - rep.GeneratorCPUSec
	rep.GuardCPUCores = rep.GuardCPUSec / (elapsed + drain + time.Second).Seconds()
	rep.PeakRSSMiB = float64(vmHWM()) / 1024
	if psi0 >= 0 && psi1 >= 0 {
		rep.CPUPressurePct = 100 * float64(psi1-psi0) / float64(time.Since(t0).Microseconds())
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rep.GoHeapMiB = float64(ms.HeapAlloc) / (1 << 20)

	gen.mu.Lock()
	var reactions []float64
	for _, a := range gen.attacks {
		r := AttackResult{Kind: a.Kind, Extension: a.Extension, Address: a.Addr.String(), StartSec: a.Start.Seconds(),
			Caught: a.acted, How: a.actedHow, TripRule: a.tripRule, Attempts: a.attempts, CallsSent: a.callsSent, CallsThru: a.callsAtAct, ReactionMs: -1}
		if !a.acted {
			r.CallsThru = a.callsSent
			rep.Missed++
		} else {
			rep.Caught++
			if !a.tripAt.IsZero() {
				r.ReactionMs = float64(a.actedAt.Sub(a.tripAt).Microseconds()) / 1000
				reactions = append(reactions, r.ReactionMs)
			}
		}
		rep.Attacks = append(rep.Attacks, r)
	}
	rep.LegitActedOn = map[string]int{}
	for k, v := range gen.legitHit {
		rep.LegitActedOn[k] = v
	}
	gen.mu.Unlock()
	if len(reactions) > 0 {
		slices.Sort(reactions)
		rep.ReactionP50 = percentile(reactions, 0.50)
		rep.ReactionP99 = percentile(reactions, 0.99)
		rep.ReactionMax = reactions[len(reactions)-1]
	}

	cancel()
	select {
	case <-done:
	case <-time.After(8 * time.Second):
	}
	return rep, nil
}

func percentile(sorted []float64, p float64) float64 {
	i := int(p*float64(len(sorted))+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// cpuPressure is /proc/pressure/cpu's "some" total in µs (-1: none).
func cpuPressure() int64 {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	_, tot, ok := strings.Cut(line, "total=")
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(tot), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// vmHWM is the process's peak resident set in KiB.
func vmHWM() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// Text writes the report for a human.
func (r *Report) Text(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	p("load: %.0f events/s target for %.1f s, %d legitimate extensions, %d legitimate calls", r.RateOffered, r.DurationSec, r.Extensions, r.LegitCalls)
	if r.EventsPerCallNote != "" {
		p("  (%s)", r.EventsPerCallNote)
	}
	p("events sent:       %d (%.0f/s, %.1f MB)", r.EventsSent, r.RateSent, float64(r.BytesSent)/1e6)
	p("guard received:    %d, queued %d, dropped %d (queue full), lost %d (connection dropped), %d reconnects; queue peak %d of %d; drained %.2f s after the end",
		r.GuardReceived, r.GuardQueued, r.GuardDropped, r.GuardLost, r.Reconnects, r.MaxQueue, r.QueueSize, r.DrainSec)
	if r.RateSustained > 0 {
		p("sustained:         %.0f events/s with nothing dropped", r.RateSustained)
	} else {
		p("sustained:         NO (dropped %d, lost %d, %d reconnects, %d writes blocked over 100 ms, %d events not sent, drained in %.2f s)",
			r.GuardDropped, r.GuardLost, r.Reconnects, r.SlowWrites, r.EventsSkipped, r.DrainSec)
	}
	p("generator:         %d late ticks, longest write %.1f ms, %d writes over 100 ms (Asterisk's writetimeout), %d events not sent (guard not reading or generator not scheduled)", r.LateTicks, r.MaxWriteMs, r.SlowWrites, r.EventsSkipped)
	p("attacks:           %d caught, %d missed", r.Caught, r.Missed)
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
		p("  %-12s %-11s at %6.1f s: %-20s rule %-14s attempts %3d, calls through before action %3d, reaction %s",
			a.Kind, who, a.StartSec, status, a.TripRule, a.Attempts, a.CallsThru, react)
	}
	p("reaction:          p50 %.3f ms, p99 %.3f ms, max %.3f ms (guard's action arrival - send time of the tripping event)", r.ReactionP50, r.ReactionP99, r.ReactionMax)
	if len(r.LegitActedOn) == 0 {
		p("legitimate:        no legitimate extension or address acted on")
	} else {
		p("legitimate:        ACTED ON %v", r.LegitActedOn)
	}
	p("cpu:               guard %.2f s (%.2f cores), generator %.2f s, process %.2f s", r.GuardCPUSec, r.GuardCPUCores, r.GeneratorCPUSec, r.ProcessCPUSec)
	p("machine:           other work kept a runnable task waiting %.0f%% of the time (/proc/pressure/cpu some)", r.CPUPressurePct)
	p("memory:            peak RSS %.1f MiB (process: guard and generator), Go heap at the end %.1f MiB", r.PeakRSSMiB, r.GoHeapMiB)
	keys := make([]string, 0, len(r.Actions))
	for k := range r.Actions {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.Actions[k]))
	}
	p("actions received:  %s", strings.Join(parts, " "))
	if r.CPUProfile != "" {
		p("cpu profile:       %s (go tool pprof -top %s)", r.CPUProfile, r.CPUProfile)
	}
}
