// Package guard is the live guard: it stays logged in to AMI, feeds the
// detector, and turns critical alerts into hang-ups, secret rotations and
// firewall bans as the policy says. Everything it needs comes in Options, so
// the whole guard runs inside a test against the fake AMI server.
package guard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/alert"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/metrics"
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
	resp    *responder
	queue   chan incoming
	connect chan struct{}
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
}

// Bans returns the ban manager (the admin endpoint, tests).
func (g *Guard) Bans() *bans.Manager { return g.bans }

// Run runs the guard until ctx ends, then shuts down within 5 s.
func Run(ctx context.Context, opts Options) error {
	cfg := opts.Config
	if err := cfg.RequireSecret(); err != nil {
		return err
	}
	if err := checkSecretsFile(cfg.Response.SecretsFile); err != nil {
		return err
	}
	g := &Guard{
		opts:    opts,
		lookup:  opts.LookupNetIP,
		queue:   make(chan incoming, cfg.AMI.QueueSize),
		connect: make(chan struct{}, 1),
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
	// In observe mode the ban manager reads the state and sets up no
	// firewall: no chain, no jump, no rule, nothing written.
	g.bans, err = bans.New(bans.Options{
		Firewall:   fw,
		StatePath:  cfg.Response.StateFile,
		Never:      g.refreshNever(ctx, "start", false),
		Observe:    cfg.Mode != config.ModeEnforce,
		RecoverFor: time.Duration(cfg.Response.BanDuration),
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

	if err := g.dialAMI(cfg, opts.Record != ""); err != nil {
		return err
	}
	defer g.events.Close()
	defer g.urgent.Close()
	g.resp = newResponder(cfg, g.log, g.events, g.urgent, g.bans)
	g.resp.metrics = g.metrics

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
		Int("bans_restored", len(g.bans.List())).Msg("guard started")
	if opts.Started != nil {
		opts.Started(g)
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	eg, egCtx := errgroup.WithContext(runCtx)
	eg.Go(func() error { return g.loop(egCtx, rec) })
	eg.Go(func() error { return g.bans.Run(egCtx) })
	eg.Go(func() error { return g.resyncLoop(egCtx) })
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

// NewFirewall returns the firewall the configuration names: iptables with
// the guard's chain, or a dry run that only logs.
func NewFirewall(cfg *config.Config, log zerolog.Logger) (firewall.Firewall, error) {
	if cfg.Response.Firewall == config.FirewallDryRun {
		return firewall.NewDryRun(log), nil
	}
	return firewall.NewIPTables(firewall.Options{Chain: cfg.Response.Chain, DisableIPv6: !cfg.Response.IPv6, KeepRulesOnSetup: true, Logger: log})
}

// dropped is told the running count of events dropped because the queue
// was full, on the reader's goroutine.
func (g *Guard) dropped(n uint64) {
	g.metrics.Dropped(n)
	// Loud, but not once per event: at 1, 10, 100, ...
	for p := uint64(1); p <= n; p *= 10 {
		if p == n {
			g.log.Error().Uint64("dropped", n).Msg("event queue full: events dropped, the guard is partly blind (raise ami.queue_size or give it CPU)")
			return
		}
	}
}

// loop owns the detector: every event goes through it in order.
func (g *Guard) loop(ctx context.Context, rec *recorder) error {
	cfg := g.cfg.Load()
	det := detector.New(cfg.Detector())
	log := g.log.With().Str("component", "detector").Logger()
	var (
		ev     ami.Event
		alerts []detector.Alert
		seq    int
		live   []string
	)
	flush := time.NewTicker(time.Second)
	defer flush.Stop()
	handleAlerts := func() {
		for i := range alerts {
			a := alerts[i]
			g.stats.alerts.Add(1)
			g.metrics.Alert(a.Rule, a.Severity)
			cfg := g.cfg.Load()
			if slices.Contains(cfg.Policy.Actions(a.Rule.String(), a.Severity.String()), config.ActionAlert) {
				alert.Log(&g.log, &a)
			} else {
				g.log.Debug().Str("rule", a.Rule.String()).Str("severity", a.Severity.String()).
					Str("extension", a.Extension).Str("reason", a.Reason).Msg("fraud alert not logged: the policy has no alert action for it")
			}
			live = live[:0]
			if a.IsExtension() {
				live = det.LiveChannels(a.Tech, a.Extension, live)
			}
			g.resp.handle(ctx, a, append([]string(nil), live...))
		}
	}
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
			alerts = det.Resync(now, it.live, alerts[:0])
			handleAlerts()
			log.Info().Int("live_channels", len(it.live)).Int("address_hints", len(it.hints)).Msg("state rebuilt from Asterisk")
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
				if detector.IsCall(&ev) {
					if cn, ok := ami.ParseChannel(ev.Channel); ok {
						g.resp.newChannel(ctx, cn.Tech, cn.Name, ev.Channel)
					}
				}
			}
			handleAlerts()
		}
	}
}

// switchMode follows a reload that changed the mode. To enforce: the
// firewall is set up and the real bans applied before the responder acts.
// To observe: nothing more is done; the bans already applied stay in the
// firewall (observe mode changes nothing, lifting included).
func (g *Guard) switchMode(mode string) {
	if mode != config.ModeEnforce {
		g.bans.Observe()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.bans.Enforce(ctx); err != nil {
		g.log.Error().Str("component", "guard").Err(err).
			Msg("the firewall cannot be set up: block_ip will fail until it can; the other actions go on")
	}
}

// resyncLoop rebuilds the view after every login of the event session:
// events lost while the link was down must not hide an attack.
func (g *Guard) resyncLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.connect:
		}
		if !g.neverResolved() {
			g.refreshNever(ctx, "connect", true)
		}
		cfg := g.cfg.Load()
		actx, cancel := context.WithTimeout(ctx, 4*time.Duration(cfg.AMI.ActionTimeout))
		it := g.rebuild(actx)
		cancel()
		select {
		case g.resync <- it:
		case <-ctx.Done():
			return nil
		}
	}
}
