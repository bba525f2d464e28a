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
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/alert"
	"github.com/astguard/astguard/internal/ami"
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
}

// Guard is a running guard.
type Guard struct {
	opts    Options
	cfg     atomic.Pointer[config.Config]
	log     zerolog.Logger
	events  *ami.Session
	urgent  *ami.Session
	bans    *bans.Manager
	resp    *responder
	queue   chan ami.Incoming
	connect chan struct{}
	resync  chan resyncItem

	metrics     *metrics.Metrics
	metricsAddr string

	stats struct {
		dropped, untrusted, alerts atomic.Uint64
		lastEvent                  atomic.Int64
	}
}

type resyncItem struct {
	live  []detector.LiveChannel
	hints []ami.Event
}

// wanted are the events the detector uses; the rest are not even queued
// (unless recording).
var wanted = map[string]bool{
	"Newchannel": true, "DialBegin": true, "DialEnd": true, "Dial": true, "Hangup": true,
	"PeerStatus": true, "ContactStatus": true, "FullyBooted": true,
	"InvalidAccountID": true, "FailedACL": true, "InvalidPassword": true, "ChallengeResponseFailed": true,
	"ChallengeSent": true, "SuccessfulAuth": true, "RequestNotAllowed": true, "RequestBadFormat": true,
}

// Bans returns the ban manager (the admin endpoint, tests).
func (g *Guard) Bans() *bans.Manager { return g.bans }

// Run runs the guard until ctx ends, then shuts down within 5 s.
func Run(ctx context.Context, opts Options) error {
	cfg := opts.Config
	if err := cfg.RequireSecret(); err != nil {
		return err
	}
	g := &Guard{
		opts:    opts,
		log:     opts.Logger,
		queue:   make(chan ami.Incoming, cfg.AMI.QueueSize),
		connect: make(chan struct{}, 1),
		resync:  make(chan resyncItem, 1),
	}
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
		var err error
		if fw, err = NewFirewall(cfg, g.log); err != nil {
			return err
		}
	}
	never, err := neverBlock(cfg)
	if err != nil {
		return err
	}
	g.bans, err = bans.New(bans.Options{
		Firewall:  fw,
		StatePath: cfg.Response.StateFile,
		Never:     never,
		Logger:    g.log,
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

	want := func(ev string) bool { return wanted[ev] }
	if opts.Record != "" {
		want = nil
	}
	g.events, err = ami.Dial(ami.SessionOptions{
		Name: "events", Address: cfg.AMI.Address, Username: cfg.AMI.Username, Secret: cfg.AMI.Secret.Reveal(),
		EventMask: "call,security,system", Queue: g.queue, Want: want,
		OnConnect: func() {
			select {
			case g.connect <- struct{}{}:
			default:
			}
		},
		OnDrop:            g.dropped,
		ActionTimeout:     time.Duration(cfg.AMI.ActionTimeout),
		ReconnectInterval: time.Duration(cfg.AMI.ReconnectInterval),
		Logger:            g.log,
	})
	if err != nil {
		return err
	}
	defer g.events.Close()
	g.urgent, err = ami.Dial(ami.SessionOptions{
		Name: "urgent", Address: cfg.AMI.Address, Username: cfg.AMI.Username, Secret: cfg.AMI.Secret.Reveal(),
		EventMask:         "off",
		ActionTimeout:     time.Duration(cfg.AMI.ActionTimeout),
		ReconnectInterval: time.Duration(cfg.AMI.ReconnectInterval),
		Logger:            g.log,
	})
	if err != nil {
		return err
	}
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

	log.Info().Str("mode", cfg.Mode).Str("ami", cfg.AMI.Address).Str("firewall", cfg.Response.Firewall).
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

// neverBlock is every address the guard must never cut off: the allow-list
// and never_block, the AMI server and the address the guard reaches it from.
func neverBlock(cfg *config.Config) ([]netip.Prefix, error) {
	out := cfg.NeverBlock()
	host, port, err := net.SplitHostPort(cfg.AMI.Address)
	if err != nil {
		return nil, err
	}
	addrs, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip", host)
	if err != nil {
		return nil, fmt.Errorf("ami.address: cannot resolve %s: %w", host, err)
	}
	for _, a := range addrs {
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
		// The local address the kernel picks to reach it (no packet is sent).
		if c, err := net.Dial("udp", net.JoinHostPort(a.String(), port)); err == nil {
			if la, ok := c.LocalAddr().(*net.UDPAddr); ok {
				if l, ok := netip.AddrFromSlice(la.IP); ok {
					l = l.Unmap()
					out = append(out, netip.PrefixFrom(l, l.BitLen()))
				}
			}
			c.Close()
		}
	}
	return out, nil
}

func (g *Guard) dropped(n uint64) {
	g.stats.dropped.Store(n)
	g.metrics.Dropped(n)
	// Loud, but not once per event: at 1, 10, 100, ...
	for p := uint64(1); p <= n; p *= 10 {
		if p == n {
			g.log.Error().Uint64("dropped", n).Msg("event queue full: events dropped, the guard is partly blind (raise ami.queue_size or give it CPU)")
			return
		}
	}
}

// dropAmigoKeys are the headers amigo adds to every message (its defect 14).
func dropAmigoKeys(k string) bool { return k == "#" || k == "TimeReceived" }

// loop owns the detector: every event goes through it in order.
func (g *Guard) loop(ctx context.Context, rec *recorder) error {
	cfg := g.cfg.Load()
	det := detector.New(cfg.Detector())
	log := g.log.With().Str("component", "detector").Logger()
	var (
		msg    ami.Message
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
			g.reload(det)
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
			g.stats.lastEvent.Store(in.Time.UnixNano())
			// Header order matters only to a recording's reader.
			setMap := msg.SetMapUnordered
			if rec != nil {
				setMap = msg.SetMap
			}
			trusted := setMap(in.Fields, dropAmigoKeys) && in.Trusted
			if rec != nil {
				if err := rec.write(msg.Raw(), in.Time); err != nil {
					log.Error().Err(err).Msg("recording failed")
				}
			}
			if !trusted {
				n := g.stats.untrusted.Add(1)
				log.Error().Uint64("count", n).Str("event", in.Fields["Event"]).
					Msg("message with a line over 4096 bytes: amigo split it and its headers may be forged; not used")
				continue
			}
			if !ami.Decode(&msg, &ev) {
				g.metrics.Event(ami.KindUnknown, ami.SecOther)
				continue
			}
			g.metrics.Event(ev.Kind, ev.Security)
			ev.Time, ev.Seq = in.Time, seq
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

// reload applies a new configuration; a bad one keeps the old running.
func (g *Guard) reload(det *detector.Detector) {
	log := g.log.With().Str("component", "guard").Logger()
	if g.opts.Load == nil {
		log.Warn().Msg("reload asked, but no configuration file to read")
		return
	}
	cfg, err := g.opts.Load()
	if err != nil {
		log.Error().Err(err).Msg("configuration reload failed: keeping the running configuration")
		return
	}
	old := g.cfg.Load()
	if cfg.AMI.Address != old.AMI.Address || cfg.AMI.Username != old.AMI.Username {
		log.Warn().Msg("ami settings changed: they take effect at the next start")
	}
	if cfg.Metrics.Listen != old.Metrics.Listen {
		log.Warn().Msg("metrics.listen changed: it takes effect at the next start")
	}
	g.metrics.SetSilenceAlarm(time.Duration(cfg.Metrics.SilenceAlarm))
	det.SetConfig(cfg.Detector())
	g.resp.setConfig(cfg)
	if never, err := neverBlock(cfg); err == nil {
		g.bans.SetNever(never)
	}
	g.cfg.Store(cfg)
	log.Info().Str("mode", cfg.Mode).Msg("configuration reloaded")
}

// resyncLoop rebuilds the view after every (re)connect: events lost across
// the reconnect, and those amigo's login swallows, must not hide an attack.
func (g *Guard) resyncLoop(ctx context.Context) error {
	log := g.log.With().Str("component", "resync").Logger()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.connect:
		}
		cfg := g.cfg.Load()
		actx, cancel := context.WithTimeout(ctx, 4*time.Duration(cfg.AMI.ActionTimeout))
		var it resyncItem
		_, items, err := g.events.List(actx, ami.Action{Name: "CoreShowChannels"})
		if err != nil {
			log.Error().Err(err).Msg("CoreShowChannels failed: live calls not rebuilt")
		} else {
			for _, c := range items {
				it.live = append(it.live, detector.LiveChannelFrom(func(key string) string {
					if v, ok := c[key]; ok {
						return v
					}
					for k, v := range c { // Asterisk 11 spells UniqueID
						if strings.EqualFold(k, key) {
							return v
						}
					}
					return ""
				}))
			}
		}
		if _, peers, err := g.events.List(actx, ami.Action{Name: "SIPpeers"}); err == nil {
			for _, p := range peers {
				if a, perr := netip.ParseAddr(p["IPaddress"]); perr == nil && ami.ValidName(p["ObjectName"]) {
					it.hints = append(it.hints, ami.Event{Kind: ami.KindPeerStatus, Peer: "SIP/" + p["ObjectName"], Status: "Registered", Addr: a.Unmap()})
				}
			}
		}
		if _, contacts, err := g.events.List(actx, ami.Action{Name: "PJSIPShowContacts"}); err == nil {
			for _, c := range contacts {
				if a, perr := netip.ParseAddr(c["ViaAddr"]); perr == nil && ami.ValidName(c["Endpoint"]) {
					it.hints = append(it.hints, ami.Event{Kind: ami.KindContactStatus, Peer: c["Endpoint"], Status: "Reachable", Addr: a.Unmap()})
				}
			}
		}
		cancel()
		select {
		case g.resync <- it:
		case <-ctx.Done():
			return nil
		}
	}
}
