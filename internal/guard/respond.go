package guard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/metrics"
)

// The actions a policy can name.
const (
	actAlert  = config.ActionAlert
	actHangup = config.ActionHangup
	actRotate = config.ActionRotateSecret
	actBlock  = config.ActionBlockIP
)

type extKey struct {
	tech ami.Tech
	name string
}

func (k extKey) String() string { return k.tech.String() + "/" + k.name }

// protection marks an earlier address of an extension whose secret was
// rotated: the real phone there still uses the old secret and fails, which
// must not get the address (often an office's shared NAT) blocked.
type protection struct {
	until time.Time
	ext   string
}

// responder turns critical alerts into actions, as the policy says.
type responder struct {
	log     zerolog.Logger
	events  *client.Client // config and Getvar actions
	urgent  *client.Client // hang-ups: never behind a slow action
	bans    *bans.Manager
	secrets *secretsFile
	now     func() time.Time
	metrics *metrics.Metrics // nil: not counted

	mu        sync.Mutex
	cfg       *config.Config
	blocked   map[extKey]time.Time // extension -> its new channels are hung up until then
	inflight  map[string]bool      // incident key -> being handled
	pending   map[string]pendingResponse
	protected map[netip.Addr]protection
	awaiting  map[string]chan struct{} // channel -> closed on its Hangup event
	wg        sync.WaitGroup
}

func newResponder(cfg *config.Config, log zerolog.Logger, events, urgent *client.Client, b *bans.Manager) *responder {
	return &responder{
		log:       log.With().Str("component", "responder").Logger(),
		events:    events,
		urgent:    urgent,
		bans:      b,
		secrets:   &secretsFile{path: cfg.Response.SecretsFile},
		now:       time.Now,
		cfg:       cfg,
		blocked:   make(map[extKey]time.Time),
		inflight:  make(map[string]bool),
		pending:   make(map[string]pendingResponse),
		protected: make(map[netip.Addr]protection),
		awaiting:  make(map[string]chan struct{}),
	}
}

func (r *responder) setConfig(cfg *config.Config) {
	r.mu.Lock()
	r.cfg = cfg
	r.mu.Unlock()
}

func (r *responder) config() *config.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg
}

// outcome writes one action's result as an alert line of its own.
func (r *responder) outcome(action, result string, a *detector.Alert, target string, took time.Duration, err error, detail string) {
	r.metrics.Action(action, result, took)
	ev := r.log.Warn()
	switch result {
	case "failed":
		ev = r.log.Error()
	case "would", "skipped":
		ev = r.log.Info()
	}
	ev = ev.Str("action", action).Str("result", result).Str("rule", a.Rule.String()).Str("severity", a.Severity.String())
	if a.IsExtension() {
		ev = ev.Str("tech", a.Tech.String()).Str("extension", a.Extension)
	} else {
		ev = ev.Str("ip", a.IP.String())
	}
	if target != "" {
		ev = ev.Str("target", target)
	}
	if took > 0 {
		ev = ev.Float64("took_ms", float64(took.Microseconds())/1000)
	}
	if err != nil {
		ev = ev.Str("error", err.Error())
	}
	if detail != "" {
		ev = ev.Str("detail", detail)
	}
	ev.Msg("action outcome")
}

// handle is called by the detector loop for every alert; it never blocks.
// live holds the extension's tracked channels at the time of the alert.
func (r *responder) handle(ctx context.Context, a detector.Alert, live []string) {
	cfg := r.config()
	acts := cfg.Policy.Actions(a.Rule.String(), a.Severity.String())
	var todo []string
	for _, act := range acts {
		if act != actAlert {
			if act == actRotate && !a.IsExtension() || act == actHangup && !a.IsExtension() {
				continue // address alerts have no extension to act on
			}
			todo = append(todo, act)
		}
	}
	if len(todo) == 0 {
		return
	}
	if cfg.Mode != config.ModeEnforce {
		for _, act := range todo {
			r.outcome(act, "would", &a, r.describe(act, &a, live), 0, nil, "mode is observe: nothing done")
		}
		return
	}
	key := a.IP.String()
	if a.IsExtension() {
		key = a.Tech.String() + "/" + a.Extension
	}
	r.mu.Lock()
	if r.inflight[key] {
		// The same incident is being handled: a later alert's actions
		// that the first did not include run when it is done.
		r.pending[key] = pendingResponse{a: a, todo: todo, live: live}
		r.mu.Unlock()
		return
	}
	r.inflight[key] = true
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		done := map[string]bool{}
		for {
			r.respond(ctx, cfg, a, todo, live)
			for _, act := range todo {
				done[act] = true
			}
			r.mu.Lock()
			p, ok := r.pending[key]
			delete(r.pending, key)
			if ok {
				todo = slices.DeleteFunc(p.todo, func(act string) bool { return done[act] })
				a, live = p.a, p.live
			}
			if !ok || len(todo) == 0 || ctx.Err() != nil {
				delete(r.inflight, key)
				r.mu.Unlock()
				return
			}
			r.mu.Unlock()
		}
	}()
}

// pendingResponse is an alert that came while its key's incident was being
// handled.
type pendingResponse struct {
	a    detector.Alert
	todo []string
	live []string
}

func (r *responder) describe(act string, a *detector.Alert, live []string) string {
	switch act {
	case actHangup:
		return fmt.Sprintf("%s/%s (%d live channels)", a.Tech, a.Extension, len(live))
	case actRotate:
		return a.Tech.String() + "/" + a.Extension
	case actBlock:
		if a.IsExtension() {
			ss := make([]string, len(a.Sources))
			for i, s := range a.Sources {
				ss[i] = s.String()
			}
			return strings.Join(ss, ",")
		}
		return a.IP.String()
	}
	return ""
}

// respond blocks and hangs up in parallel, then rotates the secret.
func (r *responder) respond(ctx context.Context, cfg *config.Config, a detector.Alert, todo []string, live []string) {
	do := func(act string) bool { return slices.Contains(todo, act) }
	var targets []netip.Addr
	if do(actBlock) {
		targets = r.blockTargets(ctx, cfg, &a, live)
	}
	var wg sync.WaitGroup
	if do(actBlock) {
		for _, addr := range targets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.block(ctx, cfg, &a, addr)
			}()
		}
	}
	if do(actHangup) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.hangupExtension(ctx, cfg, &a, live)
		}()
	}
	wg.Wait()
	if do(actRotate) {
		r.rotate(ctx, cfg, &a, targets)
	}
}

// blockTargets picks the addresses to block for an alert. For an extension,
// the address its live call comes from, as Asterisk sees it (Getvar
// CHANNEL(peerip) / CHANNEL(pjsip,remote_addr)): the registration address
// may be the real user's while the thief calls from elsewhere. Without a
// live channel, the newest address Asterisk saw it authenticate from.
func (r *responder) blockTargets(ctx context.Context, cfg *config.Config, a *detector.Alert, live []string) []netip.Addr {
	if !a.IsExtension() {
		return []netip.Addr{a.IP}
	}
	var out []netip.Addr
	for _, ch := range live {
		if len(out) > 0 {
			break
		}
		if addr, ok := r.channelAddr(ctx, cfg, a.Tech, ch); ok {
			out = append(out, addr)
		}
	}
	if len(out) == 0 && len(a.Sources) > 0 {
		out = append(out, a.Sources[0])
	}
	return out
}

func (r *responder) channelAddr(ctx context.Context, cfg *config.Config, tech ami.Tech, channel string) (netip.Addr, bool) {
	variable := "CHANNEL(peerip)"
	if tech == ami.TechPJSIP {
		variable = "CHANNEL(pjsip,remote_addr)"
	} else if tech != ami.TechSIP {
		return netip.Addr{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(cfg.AMI.ActionTimeout))
	defer cancel()
	resp, err := r.urgent.Do(ctx, ami.Action{Name: "Getvar", Headers: []ami.Header{{Key: "Channel", Value: channel}, {Key: "Variable", Value: variable}}})
	if err != nil {
		return netip.Addr{}, false
	}
	v := resp.Get("Value")
	if ap, err := netip.ParseAddrPort(v); err == nil {
		return ap.Addr().Unmap(), true
	}
	if ad, err := netip.ParseAddr(v); err == nil {
		return ad.Unmap(), true
	}
	return netip.Addr{}, false
}

func (r *responder) block(ctx context.Context, cfg *config.Config, a *detector.Alert, addr netip.Addr) {
	target := addr.String()
	if p, ok := r.protectedAddr(addr); ok {
		r.outcome(actBlock, "skipped", a, target, 0, nil,
			fmt.Sprintf("%s is an earlier address of %s, whose secret was rotated: its failures are the real phone still using the old secret; give the phone the new secret (from the secrets file)", target, p.ext))
		return
	}
	ext := ""
	if a.IsExtension() {
		ext = a.Tech.String() + "/" + a.Extension
	}
	reason := fmt.Sprintf("%s %s: %d %s", a.Rule, a.Severity, a.Count, a.Reason)
	start := r.now()
	err := retry(ctx, cfg, func() error {
		_, err := r.bans.Ban(ctx, addr, time.Duration(cfg.Response.BanDuration), reason, ext)
		return err
	})
	took := r.now().Sub(start)
	switch {
	case errors.Is(err, bans.ErrProtected):
		r.outcome(actBlock, "skipped", a, target, took, nil, "never blocked: allow-listed, the AMI server or the guard's own address")
	case err != nil:
		r.outcome(actBlock, "failed", a, target, took, err, "the ban is recorded and re-applied until the firewall accepts it")
	default:
		r.outcome(actBlock, "done", a, target, took, nil, "dropped for "+time.Duration(cfg.Response.BanDuration).String())
	}
}

// hangupExtension hangs up every channel of the extension: by a /regex/ on
// its channel names (atomic, catches channels the guard missed) and then by
// name for the tracked ones that remain (Local channels, Asterisk before 11),
// confirmed by their Hangup events. New channels of the extension are hung
// up as they appear for the ban duration.
func (r *responder) hangupExtension(ctx context.Context, cfg *config.Config, a *detector.Alert, live []string) {
	k := extKey{a.Tech, a.Extension}
	r.mu.Lock()
	r.blocked[k] = r.now().Add(time.Duration(cfg.Response.BanDuration))
	waits := make(map[string]chan struct{}, len(live))
	for _, ch := range live {
		c := make(chan struct{})
		r.awaiting[ch] = c
		waits[ch] = c
	}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		for ch, c := range waits {
			if r.awaiting[ch] == c {
				delete(r.awaiting, ch)
			}
		}
		r.mu.Unlock()
	}()
	start := r.now()
	cause := strconv.Itoa(cfg.Response.HangupCause)
	hung := map[string]bool{}
	var firstErr error
	if re, ok := channelRegex(a.Tech, a.Extension); ok && hangupByRegex(r.urgent.Version()) {
		err := retry(ctx, cfg, func() error {
			actx, cancel := context.WithTimeout(ctx, 2*time.Duration(cfg.AMI.ActionTimeout))
			defer cancel()
			_, items, err := r.urgent.List(actx, ami.Action{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: re}, {Key: "Cause", Value: cause}}})
			for _, it := range items {
				hung[it.Get("Channel")] = true
			}
			return err
		})
		if err != nil {
			firstErr = err
		}
	}
	for _, ch := range live {
		if hung[ch] || !ami.ValidChannel(ch) {
			continue
		}
		err := retry(ctx, cfg, func() error {
			actx, cancel := context.WithTimeout(ctx, time.Duration(cfg.AMI.ActionTimeout))
			defer cancel()
			_, err := r.urgent.Do(actx, ami.Action{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: ch}, {Key: "Cause", Value: cause}}})
			return err
		})
		var ae *ami.ActionError
		switch {
		case err == nil:
			hung[ch] = true
		case errors.As(err, &ae) && ae.Message == "No such channel":
			// already gone
		case firstErr == nil:
			firstErr = err
		}
	}
	sent := r.now().Sub(start)
	// Confirmation: the Hangup events of the tracked channels.
	confirmed := 0
	deadline := time.NewTimer(2 * time.Second)
	defer deadline.Stop()
	for _, c := range waits {
		select {
		case <-c:
			confirmed++
		case <-deadline.C:
		case <-ctx.Done():
		}
	}
	detail := fmt.Sprintf("%d channels hung up, %d of %d tracked confirmed by Hangup events; new channels are hung up as they appear", len(hung), confirmed, len(waits))
	if firstErr != nil && len(hung) == 0 && len(live) > 0 {
		r.outcome(actHangup, "failed", a, k.String(), sent, firstErr, detail)
		return
	}
	r.outcome(actHangup, "done", a, k.String(), sent, firstErr, detail)
}

// channelRegex is the Hangup /regex/ matching every channel of an extension
// (POSIX ERE, the name's metacharacters escaped).
func channelRegex(tech ami.Tech, name string) (string, bool) {
	if !ami.ValidName(name) {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if strings.IndexByte(`\.+*?()|[]{}^$`, c) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	switch tech {
	case ami.TechSIP, ami.TechPJSIP:
		return "/^" + tech.String() + `\/` + b.String() + "-[0-9a-f]{8}$/", true
	case ami.TechIAX2:
		return `/^IAX2\/` + b.String() + "-[0-9]+$/", true
	}
	return "", false
}

// channelGone is told of every Hangup event.
func (r *responder) channelGone(channel string) {
	r.mu.Lock()
	if c, ok := r.awaiting[channel]; ok {
		close(c)
		delete(r.awaiting, channel)
	}
	r.mu.Unlock()
}

// newChannel is told of every channel an extension originates: a channel of
// an extension being stopped is hung up at once.
func (r *responder) newChannel(ctx context.Context, tech ami.Tech, name, channel string) {
	k := extKey{tech, name}
	r.mu.Lock()
	until, ok := r.blocked[k]
	if ok && r.now().After(until) {
		delete(r.blocked, k)
		ok = false
	}
	cfg := r.cfg
	r.mu.Unlock()
	if !ok || !ami.ValidChannel(channel) {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		start := r.now()
		actx, cancel := context.WithTimeout(ctx, time.Duration(cfg.AMI.ActionTimeout))
		defer cancel()
		_, err := r.urgent.Do(actx, ami.Action{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: channel}, {Key: "Cause", Value: strconv.Itoa(cfg.Response.HangupCause)}}})
		a := detector.Alert{Tech: tech, Extension: name, Severity: detector.Critical}
		if err != nil {
			r.outcome(actHangup, "failed", &a, channel, r.now().Sub(start), err, "new channel of a stopped extension")
			return
		}
		r.outcome(actHangup, "done", &a, channel, r.now().Sub(start), nil, "new channel of a stopped extension")
	}()
}

func (r *responder) protectedAddr(addr netip.Addr) (protection, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.protected[addr.Unmap()]
	if ok && r.now().After(p.until) {
		delete(r.protected, addr.Unmap())
		return protection{}, false
	}
	return p, ok
}

// rotate gives the extension a new secret: into the right section of
// sip.conf or pjsip.conf by UpdateConfig with a reload, and into the
// secrets file for the administrator. It never logs the secret.
func (r *responder) rotate(ctx context.Context, cfg *config.Config, a *detector.Alert, attackers []netip.Addr) {
	ext := a.Tech.String() + "/" + a.Extension
	start := r.now()
	actx, cancel := context.WithTimeout(ctx, 4*time.Duration(cfg.AMI.ActionTimeout))
	defer cancel()
	var plan rotation
	err := retry(actx, cfg, func() error {
		var err error
		plan, err = planRotation(actx, r.events, a.Tech, a.Extension)
		return err
	})
	var ref *refusal
	if errors.As(err, &ref) {
		r.outcome(actRotate, "skipped", a, ext, r.now().Sub(start), nil, "cannot rotate here: "+ref.why)
		return
	}
	if err != nil {
		r.outcome(actRotate, "failed", a, ext, r.now().Sub(start), err, "could not read the configuration over AMI")
		return
	}
	secret, err := newSecret()
	if err != nil {
		r.outcome(actRotate, "failed", a, ext, r.now().Sub(start), err, "no randomness")
		return
	}
	if err := r.secrets.write(secretLine{Time: r.now().UTC(), Extension: ext, Secret: secret, Status: "pending"}); err != nil {
		r.outcome(actRotate, "failed", a, ext, r.now().Sub(start), err, "the secrets file cannot be written, so the secret was not changed (it would be lost)")
		return
	}
	err = retry(actx, cfg, func() error {
		_, err := r.events.Do(actx, updateAction(plan, secret))
		return err
	})
	status := "applied"
	if err != nil {
		status = "failed"
	}
	if werr := r.secrets.write(secretLine{Time: r.now().UTC(), Extension: ext, Secret: secret, Status: status}); werr != nil {
		r.log.Error().Err(werr).Str("extension", ext).Msg("cannot record the outcome in the secrets file")
	}
	took := r.now().Sub(start)
	if err != nil {
		r.outcome(actRotate, "failed", a, ext, took, err, fmt.Sprintf("UpdateConfig of %s in [%s] of %s failed", plan.key, plan.category, plan.file))
		return
	}
	// The addresses the extension used before, other than the thief's, are
	// the real phone's: protect them from being blocked for its failures.
	var earlier []string
	if p := time.Duration(cfg.Response.ProtectPreviousSources); p > 0 {
		r.mu.Lock()
		for _, s := range a.Sources {
			if !slices.Contains(attackers, s) {
				r.protected[s] = protection{until: r.now().Add(p), ext: ext}
				earlier = append(earlier, s.String())
			}
		}
		r.mu.Unlock()
	}
	detail := fmt.Sprintf("new %s in [%s] of %s, reloaded with %s; the new secret is in %s: the real phone needs it", plan.key, plan.category, plan.file, plan.reload, cfg.Response.SecretsFile)
	if len(earlier) > 0 {
		detail += "; failures from its earlier addresses " + strings.Join(earlier, ",") + " will not be blocked"
	}
	r.outcome(actRotate, "done", a, ext, took, nil, detail)
}

// retry runs f until it succeeds, fails in a way a retry cannot help, or
// runs out of attempts, doubling the pause each time.
func retry(ctx context.Context, cfg *config.Config, f func() error) error {
	pause := time.Duration(cfg.Response.RetryBackoff)
	var err error
	for attempt := 1; ; attempt++ {
		if err = f(); err == nil || !retryable(err) || attempt >= cfg.Response.RetryMax {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		pause *= 2
	}
}

// permanentMessages are AMI errors a retry cannot fix.
var permanentMessages = []string{"No such channel", "Given category does not exist", "Permission denied", "Invalid/unknown command"}

func retryable(err error) bool {
	var ref *refusal
	switch {
	case errors.As(err, &ref), errors.Is(err, bans.ErrProtected), errors.Is(err, ami.ErrUnsafe),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, client.ErrClosed):
		return false
	}
	var ae *ami.ActionError
	if errors.As(err, &ae) {
		for _, m := range permanentMessages {
			if strings.HasPrefix(ae.Message, m) {
				return false
			}
		}
		return true
	}
	var temp interface{ Temporary() bool }
	if errors.As(err, &temp) {
		return temp.Temporary()
	}
	return true
}

func (r *responder) wait() { r.wg.Wait() }
