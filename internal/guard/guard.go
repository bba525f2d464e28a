// Package guard is the live guard. It wires the stages: it stays logged in
// to AMI and feeds the detector (package detector) every event in order,
// hands each alert to the incident book (package incident), which decides
// with the policy table (package policy) what to do about the alert's
// incident, and has the responder carry the decisions out off the loop
// with the action packages (hang-up, block, secret rotation). It also runs
// the resync after every login, the reloads and the admin socket.
// Everything it needs comes in Options, so the whole guard runs inside a
// test against the fake AMI server.
package guard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/action/secret/setup"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/crowdsec"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/metrics"
	"github.com/astguard/astguard/internal/notify"
	"github.com/astguard/astguard/internal/policy"
)

// Options hold what the guard runs with.
type Options struct {
	Config *config.Config
	// Load re-reads the configuration on a reload signal (nil: reloads
	// are refused).
	Load   func() (*config.Config, error)
	Reload <-chan struct{}
	// ConfigFile is the file Load reads: every message about the
	// configuration names it.
	ConfigFile string
	// Logger is where the guard logs. Its level is replaced by log.level,
	// which a reload changes; a disabled logger stays disabled.
	Logger zerolog.Logger
	// Firewall overrides the one the config names (tests, demo).
	Firewall firewall.Firewall
	// Record, when set, writes everything received to this transcript,
	// rotated at RecordMaxBytes (default 100 MiB), keeping RecordKeep old files.
	Record         string
	RecordMaxBytes int64
	RecordKeep     int
	// Started, if set, is called once the guard is wired (tests).
	Started func(*Guard)
	// Reloaded, if set, is called with the outcome of every reload.
	Reloaded func(ReloadResult)
	// LookupNetIP resolves the host of ami.address (tests); default
	// net.DefaultResolver.LookupNetIP.
	LookupNetIP func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// Outcomes, if set, is called with every action outcome the guard
	// logs, from the goroutine that logs it (tests).
	Outcomes func(Outcome)
	// Version is the guard's version, sent to CrowdSec in its User-Agent
	// ("astguard/VERSION"); default "dev".
	Version string
}

// Guard is a running guard.
type Guard struct {
	opts    Options
	cfg     atomic.Pointer[config.Config]
	log     zerolog.Logger
	level   levelGate
	lookup  lookupFunc
	never   neverState
	events  *client.Client // events, config and Getvar actions
	urgent  *client.Client // hang-ups only
	bans    *bans.Manager
	book    *incident.Book    // the incidents: what was decided and done about each attack
	cs      *crowdsec.Service // nil unless [crowdsec] push or pull is on
	table   *policy.Table     // the [policy] table; the detector loop's own
	resp    *responder
	notify  *notify.Notifier // nil: no sender configured
	queue   chan incoming
	connect chan struct{}
	dropSig chan struct{} // events were dropped: the resync loop reads the live calls again
	resync  chan resyncItem

	metrics     *metrics.Metrics
	metricsAddr string
	warnedOld   atomic.Bool // said what an Asterisk before 12 does not show

	stats struct {
		queued, dropped, alerts atomic.Uint64
		lastEvent               atomic.Int64
	}
}

type resyncItem struct {
	live  []detector.LiveChannel
	hints []ami.Event
	// listed: CoreShowChannels answered, live is Asterisk's list.
	listed bool
	// drops is the count of dropped events when the rebuild began: the
	// view it gives covers every drop up to there.
	drops uint64
}

// Bans returns the ban manager (the admin endpoint, tests).
func (g *Guard) Bans() *bans.Manager { return g.bans }

// CrowdSec returns the guard's CrowdSec link, nil when it is off.
func (g *Guard) CrowdSec() *crowdsec.Service { return g.cs }

// Run runs the guard until ctx ends, then shuts down within 5 s.
func Run(ctx context.Context, opts Options) error {
	cfg := opts.Config
	if err := cfg.RequireSecret(); err != nil {
		return err
	}
	if err := secret.CheckFile(cfg.Response.SecretsFile); err != nil {
		return fmt.Errorf("response.secrets_file: %w", err)
	}
	g := &Guard{
		opts:    opts,
		lookup:  opts.LookupNetIP,
		queue:   make(chan incoming, cfg.AMI.QueueSize),
		connect: make(chan struct{}, 1),
		dropSig: make(chan struct{}, 1),
		resync:  make(chan resyncItem, 1),
	}
	if g.lookup == nil {
		g.lookup = net.DefaultResolver.LookupNetIP
	}
	g.level.set(cfg.Log.Level)
	g.log = opts.Logger
	if g.log.GetLevel() != zerolog.Disabled {
		g.log = g.log.Level(zerolog.TraceLevel) // the level gate decides
	}
	g.log = g.log.Sample(&g.level)
	g.cfg.Store(cfg)
	log := g.log.With().Str("component", "guard").Logger()
	g.metrics = g.newMetrics(cfg)
	msrv, err := g.listenMetrics(cfg.Metrics.Listen)
	if err != nil {
		return err
	}
	if msrv != nil {
		defer msrv.Close()
	}

	fw := opts.Firewall
	if fw == nil {
		// Built at its first use, and again until that works: a missing or
		// refused iptables must not stop the hang-ups and rotations (the
		// bans are kept and re-applied once it works), and observe mode
		// never uses the firewall at all.
		fw = firewall.NewLazy(func() (firewall.Firewall, error) { return NewFirewall(cfg, g.log) },
			cfg.Response.Firewall != config.FirewallDryRun)
	}
	// Watched, so that a firewall that keeps failing is notified.
	wfw := &watchedFirewall{Firewall: fw}
	if g.notify, err = g.newNotifier(cfg, wfw); err != nil {
		return err
	}
	// In observe mode the ban manager reads the state and sets up no
	// firewall: no chain, no jump, no rule, nothing written.
	g.bans, err = bans.New(bans.Options{
		Firewall:   wfw,
		StatePath:  cfg.Response.StateFile,
		Never:      g.refreshNever(ctx, "start", false),
		Observe:    cfg.Mode != config.ModeEnforce,
		RecoverFor: time.Duration(cfg.Response.BanDuration),
		IPv6Prefix: cfg.Response.IPv6Prefix,
		Logger:     g.log,
	})
	if err != nil {
		return err
	}
	if err := g.bans.Start(ctx); errors.Is(err, bans.ErrFirewallUnavailable) {
		log.Error().Err(err).Msg("the firewall cannot be set up: block_ip will fail until it can; the other actions go on")
	} else if err != nil {
		return fmt.Errorf("restoring bans: %w", err)
	}
	bansClosed := false
	defer func() {
		if !bansClosed { // an early return: release the state file's lock
			closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = g.bans.Close(closeCtx)
		}
	}()

	// The incidents, kept in the bans state file: a restart in the middle
	// of an attack does not run its actions again.
	var observer incident.Observer
	if g.notify != nil {
		observer = g.notify.Observe
	}
	g.book, err = incident.New(incident.Options{Quiet: time.Duration(cfg.Response.IncidentQuiet), Mode: policy.ModeOf(cfg.Mode), Store: g.bans,
		Observer: observer})
	if err != nil {
		return err
	}
	if err := g.book.Load(g.bans.Incidents(), time.Now()); err != nil {
		log.Error().Err(err).Str("state", cfg.Response.StateFile).
			Msg("incidents not loaded: going on with none, so the actions of an attack already answered may run again")
	}
	if g.table, err = policy.NewTable(&cfg.Policy); err != nil {
		return err
	}
	if g.cs, err = g.newCrowdSec(cfg); err != nil {
		return err
	}

	if err := g.dialAMI(cfg, opts.Record != ""); err != nil {
		return err
	}
	defer g.events.Close()
	defer g.urgent.Close()
	g.resp = newResponder(g.log, g.book, g.events, g.urgent, g.bans)
	g.resp.metrics = g.metrics
	g.resp.outcomes = opts.Outcomes
	closeStore, err := g.secretStore(cfg)
	if err != nil {
		return err
	}
	defer closeStore()
	if g.cs != nil {
		g.resp.banned = g.cs.Banned
	}

	var rec *recorder
	if opts.Record != "" {
		max, keep := opts.RecordMaxBytes, opts.RecordKeep
		if max <= 0 {
			max = 100 << 20
		}
		if keep <= 0 {
			keep = 5
		}
		if rec, err = newRecorder(opts.Record, max, keep, g.events.Banner); err != nil {
			return err
		}
	}

	log.Info().Str("config", opts.ConfigFile).Str("mode", cfg.Mode).Str("ami", cfg.AMI.Address).Str("firewall", cfg.Response.Firewall).
		Int("bans_restored", len(g.bans.List())).Int("incidents_open", len(g.book.List(time.Now()).Open)).Msg("guard started")
	if opts.Started != nil {
		opts.Started(g)
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	eg, egCtx := errgroup.WithContext(runCtx)
	eg.Go(func() error { return g.loop(egCtx, rec) })
	eg.Go(func() error { return g.bans.Run(egCtx) })
	eg.Go(func() error { return g.resyncLoop(egCtx) })
	eg.Go(func() error { return g.incidentsLoop(egCtx) })
	if g.notify != nil {
		eg.Go(func() error { return g.notify.Run(egCtx, g.book) })
	}
	if g.cs != nil {
		eg.Go(func() error { return g.cs.Run(egCtx) })
	}
	if msrv != nil {
		eg.Go(func() error { return msrv.Serve(egCtx) })
	}
	srv, err := g.listenAdmin(cfg.Response.AdminSocket)
	if err != nil {
		cancel()
		_ = eg.Wait()
		return err
	}
	eg.Go(func() error { return srv.serve(egCtx) })
	err = eg.Wait()

	// Shutdown, newest first, bounded: in-flight actions get what is left
	// of 5 s, then the bans are saved and the sessions closed.
	done := make(chan struct{})
	go func() { g.resp.wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(4 * time.Second):
		log.Warn().Msg("actions still running at shutdown")
	}
	closeCtx, cancelClose := context.WithTimeout(context.Background(), time.Second)
	defer cancelClose()
	bansClosed = true
	if cerr := g.bans.Close(closeCtx); cerr != nil {
		log.Error().Err(cerr).Msg("closing bans")
	}
	if rec != nil {
		if cerr := rec.close(); cerr != nil {
			log.Error().Err(cerr).Msg("closing the recording")
		}
	}
	log.Info().Msg("guard stopped")
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// secretStore sets up the store of [secrets] for the rotations, and says
// at start which it is and why (an error when it cannot be used: every
// rotation would fail).
func (g *Guard) secretStore(cfg *config.Config) (func() error, error) {
	choice := setup.Choose(cfg.Secrets)
	store, closeStore, err := choice.Build(g.events)
	if err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	g.resp.store, g.resp.storeTime = store, choice.ReloadTimeout
	ev := g.log.Info()
	msg := "secret store chosen"
	if choice.Err != nil {
		ev = g.log.Error().Str("error", choice.Err.Error())
		msg = "secret store cannot be used: every rotate_secret fails until [secrets] is fixed and the guard restarted"
	}
	ev = ev.Str("component", "guard").Str("store", choice.Store).Str("why", choice.Why)
	if choice.Database != "" {
		ev = ev.Str("database", choice.Database)
	}
	ev.Msg(msg)
	return closeStore, nil
}

// newCrowdSec builds the link to CrowdSec that [crowdsec] asks for (nil
// when push and pull are off) and adds its metrics to the guard's.
func (g *Guard) newCrowdSec(cfg *config.Config) (*crowdsec.Service, error) {
	c := &cfg.CrowdSec
	if !c.Enabled() {
		return nil, nil
	}
	version := g.opts.Version
	if version == "" {
		version = "dev"
	}
	s, err := crowdsec.New(crowdsec.Options{
		URL: c.URL, Timeout: time.Duration(c.Timeout), Push: c.Push, Pull: c.Pull,
		MachineID: c.MachineID, Password: c.Password.Reveal(), APIKey: c.APIKey.Reveal(),
		PullInterval:           time.Duration(c.PullInterval),
		ScenariosContaining:    c.ScenariosContaining,
		ScenariosNotContaining: c.ScenariosNotContaining,
		Origins:                c.Origins,
		WidestIPv4:             c.WidestIPv4, WidestIPv6: c.WidestIPv6,
		Bans:      g.bans,
		Protected: g.protected,
		// The mode in effect: a reload changes it.
		Enforcing:   func() bool { return g.cfg.Load().Mode == config.ModeEnforce },
		Logger:      g.log,
		UserAgent:   "astguard/" + version,
		LookupNetIP: g.lookup,
	})
	if err != nil {
		return nil, fmt.Errorf("crowdsec: %w", err)
	}
	if err := g.metrics.Registry().Register(s); err != nil {
		return nil, fmt.Errorf("crowdsec metrics: %w", err)
	}
	return s, nil
}

// NewFirewall returns the firewall the configuration names: the guard's
// chain matching kernel address sets or holding one rule per ban
// (response.firewall_match), or a dry run that only logs.
func NewFirewall(cfg *config.Config, log zerolog.Logger) (firewall.Firewall, error) {
	if cfg.Response.Firewall == config.FirewallDryRun {
		return firewall.NewDryRun(log), nil
	}
	return firewall.New(firewall.Options{Match: firewall.Match(cfg.Response.FirewallMatch), Chain: cfg.Response.Chain,
		DisableIPv6: !cfg.Response.IPv6, KeepRulesOnSetup: true, Logger: log})
}

// dropped is told the running count of events dropped because the queue
// was full, on the reader's goroutine.
func (g *Guard) dropped(n uint64) {
	g.metrics.Dropped(n)
	select {
	case g.dropSig <- struct{}{}:
	default:
	}
	// Loud, but not once per event: at 1, 10, 100, ...
	for p := uint64(1); p <= n; p *= 10 {
		if p == n {
			g.log.Error().Uint64("dropped", n).Msg("event queue full: events dropped, the guard is partly blind (raise ami.queue_size or give it CPU)")
			return
		}
	}
}

// loop owns the detector: every event goes through it in order, and every
// alert through the incident book (the decisions are made here, in order;
// the responder carries them out elsewhere).
func (g *Guard) loop(ctx context.Context, rec *recorder) error {
	cfg := g.cfg.Load()
	det := detector.New(cfg.Detector())
	log := g.log.With().Str("component", "detector").Logger()
	var (
		ev     ami.Event
		alerts []detector.Alert
		decs   []policy.Decision
		seq    int
		live   []string
		// synced is the count of dropped events the last rebuild covers;
		// while more were dropped, concurrent alerts wait for the next.
		synced uint64
		held   heldAlerts
	)
	flush := time.NewTicker(time.Second)
	defer flush.Stop()
	// decide passes alerts to the incident book and the responder; new
	// ones are counted, and a concurrent one is held while the live calls
	// may be stale (released ones were counted when held).
	decide := func(released bool) {
		for i := range alerts {
			a := &alerts[i]
			if !released {
				g.stats.alerts.Add(1)
				g.metrics.Alert(a.Rule, a.Severity)
			}
			if drops := g.stats.dropped.Load(); !released && drops > synced && holds(a) && held.hold(a, drops) {
				log.Warn().Str("rule", a.Rule.String()).Str("severity", a.Severity.String()).Str("tech", a.Tech.String()).
					Str("extension", a.Extension).Int("count", a.Count).Uint64("dropped", drops).
					Msg("concurrent alert held: events were dropped, so its live calls are checked against Asterisk's channel list before anything is done")
				continue
			}
			decs = g.book.Decide(g.table, a, time.Now(), decs[:0])
			g.resp.decided(ctx, g.cfg.Load(), a, decs, func() []string {
				if !a.IsExtension() {
					return nil
				}
				live = det.LiveChannels(a.Tech, a.Extension, live[:0])
				return append([]string{}, live...)
			})
		}
	}
	handleAlerts := func() { decide(false) }
	for {
		select {
		case <-ctx.Done():
			if rec != nil {
				_ = rec.flush()
			}
			return nil
		case <-flush.C:
			g.metrics.SetDetector(det.Stats())
			if rec != nil {
				if err := rec.flush(); err != nil {
					log.Error().Err(err).Msg("recording failed")
				}
			}
		case <-g.opts.Reload:
			g.reload(ctx, det)
		case it := <-g.resync:
			now := time.Now()
			for i := range it.hints {
				it.hints[i].Time = now
				alerts = det.Process(&it.hints[i], alerts[:0])
				handleAlerts()
			}
			if !it.listed {
				continue // the calls stay as the events left them
			}
			alerts = det.Resync(now, it.live, alerts[:0])
			handleAlerts()
			synced = max(synced, it.drops)
			alerts = held.release(det, g.cfg.Load().Detector().Concurrent, it.drops, log, alerts[:0])
			decide(true)
			log.Info().Int("live_channels", len(it.live)).Int("address_hints", len(it.hints)).Uint64("dropped", it.drops).
				Msg("state rebuilt from Asterisk")
		case in := <-g.queue:
			seq++
			g.stats.lastEvent.Store(in.at.UnixNano())
			if rec != nil && in.raw != nil {
				if err := rec.write(in.raw, in.at); err != nil {
					log.Error().Err(err).Msg("recording failed")
				}
			}
			if in.ev == nil {
				g.metrics.Event(ami.KindUnknown, ami.SecOther)
				continue
			}
			ev = *in.ev
			eventPool.Put(in.ev)
			g.metrics.Event(ev.Kind, ev.Security)
			ev.Time, ev.Seq = in.at, seq
			alerts = det.Process(&ev, alerts[:0])
			if ev.Forged {
				log.Warn().Uint64("count", det.Stats().Forged).Str("event", ev.Kind.String()).
					Str("field", ev.ForgedField).Msg("message repeats a header the guard attributes by (forged in a caller name or user name?): not used")
				continue
			}
			switch ev.Kind {
			case ami.KindHangup:
				g.resp.channelGone(ev.Channel)
			case ami.KindNewchannel:
				// A new call of an extension whose incident hung up its
				// calls is hung up too, while the incident is open.
				if detector.IsCall(&ev) {
					if cn, ok := ami.ParseChannel(ev.Channel); ok {
						if stop, ok := g.book.Stopped(cn.Tech, cn.Name, time.Now()); ok {
							g.resp.stoppedChannel(ctx, g.cfg.Load(), stop, ami.Extension{Tech: cn.Tech, Name: cn.Name}, ev.Channel)
						}
					}
				}
			}
			handleAlerts()
		}
	}
}

// incidentsLoop closes, once a second, the incidents whose quiet time has
// passed, and saves the book when it changed: off the detector loop, which
// must never wait for a disk write.
func (g *Guard) incidentsLoop(ctx context.Context) error {
	var saving saveState
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			g.expireIncidents(&saving)
		}
	}
}

// expireIncidents closes the incidents whose quiet time has passed and
// logs each.
func (g *Guard) expireIncidents(saving *saveState) {
	closed, err := g.book.Expire(time.Now())
	saving.note(&g.log, err)
	for i := range closed {
		rec := &closed[i]
		ev := g.log.Info().Str("component", "incidents").Str("incident", rec.ID).Str("rule", rec.Rule.String())
		if rec.Key.IsExtension() {
			ev = ev.Str("tech", rec.Key.Tech.String()).Str("extension", rec.Key.Name)
		} else {
			ev = ev.Str("ip", rec.Key.Addr.String())
		}
		ev.Str("close_reason", rec.CloseReason).Int("alerts", rec.AlertCount).Time("opened", rec.Opened).Time("last_alert", rec.LastAlert).
			Msg("incident closed: no alert of its key for incident_quiet")
	}
}

// saveState says, once per change, whether the incident book is saved:
// a failing save is logged at error when its error changes, and once at
// info when the book is saved again.
type saveState struct{ failing string }

func (s *saveState) note(log *zerolog.Logger, err error) {
	switch {
	case err == nil && s.failing != "":
		s.failing = ""
		log.Info().Str("component", "incidents").Msg("incidents saved again")
	case err != nil && err.Error() != s.failing:
		s.failing = err.Error()
		log.Error().Str("component", "incidents").Err(err).
			Msg("incidents not saved: the actions go on, but a restart before the next save may run them again")
	}
}

// switchMode follows a reload that changed the mode. To enforce: the
// firewall is set up and the real bans applied before the responder acts.
// To observe: nothing more is done; the bans already applied stay in the
// firewall (observe mode changes nothing, lifting included). The incident
// book switches after the bans manager: it saves its incidents through
// it, which refuses them while observing.
func (g *Guard) switchMode(mode string) {
	if mode != config.ModeEnforce {
		g.bans.Observe()
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := g.bans.Enforce(ctx); err != nil {
			g.log.Error().Str("component", "guard").Err(err).
				Msg("the firewall cannot be set up: block_ip will fail until it can; the other actions go on")
		}
	}
	if err := g.book.SetMode(policy.ModeOf(mode)); err != nil {
		g.log.Error().Str("component", "incidents").Err(err).
			Msg("incidents not saved: the actions go on, but a restart before the next save may run them again")
	}
}

// resyncLoop rebuilds the view after every login of the event session:
// events lost while the link was down must not hide an attack.
func (g *Guard) resyncLoop(ctx context.Context) error {
	var (
		full bool      // a login: the addresses too, not only the calls
		last time.Time // the last rebuild began
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.connect:
			full = true
		case <-g.dropSig:
			// At most one rebuild a second for drops: they come in
			// bursts, and CoreShowChannels costs Asterisk a walk of its
			// channels.
			select {
			case <-time.After(time.Until(last.Add(time.Second))):
			case <-ctx.Done():
				return nil
			}
		}
		if full && !g.neverResolved() {
			g.refreshNever(ctx, "connect", true)
		}
		cfg := g.cfg.Load()
		actx, cancel := context.WithTimeout(ctx, 4*time.Duration(cfg.AMI.ActionTimeout))
		drops := g.stats.dropped.Load()
		last = time.Now()
		it := g.rebuild(actx, full)
		it.drops = drops
		full = false
		cancel()
		if !it.listed && drops > 0 {
			// Held alerts wait for a list: ask again in a second.
			select {
			case g.dropSig <- struct{}{}:
			default:
			}
		}
		select {
		case g.resync <- it:
		case <-ctx.Done():
			return nil
		}
	}
}
