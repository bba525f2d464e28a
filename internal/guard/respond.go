package guard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/hangup"
	"github.com/astguard/astguard/internal/ami"
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
	events  *ami.Session // config and Getvar actions
	urgent  *ami.Session // hang-ups: never behind a slow action
	hangup  *hangup.Hanger
	bans    *bans.Manager
	now     func() time.Time
	metrics *metrics.Metrics // nil: not counted

	mu        sync.Mutex
	cfg       *config.Config
	blocked   map[ami.Extension]time.Time // extension -> its new channels are hung up until then
	inflight  map[string]bool             // incident key -> being handled
	pending   map[string]pendingResponse
	protected map[netip.Addr]protection
	secrets   map[string]*secretsFile // by path: the writes to one file are serialized
	wg        sync.WaitGroup
}

func newResponder(cfg *config.Config, log zerolog.Logger, events, urgent *ami.Session, b *bans.Manager) *responder {
	return &responder{
		log:       log.With().Str("component", "responder").Logger(),
		events:    events,
		urgent:    urgent,
		hangup:    hangup.New(urgent),
		bans:      b,
		now:       time.Now,
		secrets:   make(map[string]*secretsFile),
		cfg:       cfg,
		blocked:   make(map[ami.Extension]time.Time),
		inflight:  make(map[string]bool),
		pending:   make(map[string]pendingResponse),
		protected: make(map[netip.Addr]protection),
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

// secretsFile returns the secrets file of cfg (response.secrets_file). A
// rotation takes it once, so its lines and every message about its secret
// name the same file, even when a reload changes the key meanwhile.
func (r *responder) secretsFile(cfg *config.Config) *secretsFile {
	r.mu.Lock()
	defer r.mu.Unlock()
	path := cfg.Response.SecretsFile
	f, ok := r.secrets[path]
	if !ok {
		f = &secretsFile{path: path}
		r.secrets[path] = f
	}
	return f
}

// report writes an action's outcome as an alert line of its own.
func (r *responder) report(a *detector.Alert, o action.Outcome) {
	r.outcome(o.Action, string(o.Result), a, o.Target, o.Took, o.Err, o.Detail)
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
		// What blockTargets would pick, without asking Asterisk.
		if !a.IsExtension() {
			return a.IP.String()
		}
		var parts []string
		if v := sourceVariable(a.Tech); v != "" && len(live) > 0 {
			parts = append(parts, "its live call's address (Getvar "+v+")")
		}
		if len(a.Sources) > 0 {
			parts = append(parts, a.Sources[0].String())
		}
		if len(parts) == 0 {
			return "nothing: no address Asterisk received its requests from"
		}
		return strings.Join(parts, ", else ")
	}
	return ""
}

// respond blocks and hangs up in parallel, then rotates the secret.
func (r *responder) respond(ctx context.Context, cfg *config.Config, a detector.Alert, todo []string, live []string) {
	do := func(act string) bool { return slices.Contains(todo, act) }
	var targets []netip.Addr
	if do(actBlock) {
		var why string
		if targets, why = r.blockTargets(ctx, cfg, &a, live); len(targets) == 0 {
			r.outcome(actBlock, "skipped", &a, "", 0, nil, why)
		}
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

// blockTargets picks the addresses to block for an alert, or says why there
// is none. For an extension, only an address Asterisk received its requests
// from: that of its live call (Getvar CHANNEL(recvip) for chan_sip, the
// packet's source, not CHANNEL(peerip), which follows the client's Contact
// header with nat=no; CHANNEL(pjsip,remote_addr), the transport's remote
// address, for PJSIP), since the registration may be the real user's while
// the thief calls from elsewhere. Without a live call, the newest of the
// alert's Sources. Never a contact: the client writes what it likes there,
// and would choose what gets blocked.
func (r *responder) blockTargets(ctx context.Context, cfg *config.Config, a *detector.Alert, live []string) ([]netip.Addr, string) {
	if !a.IsExtension() {
		return []netip.Addr{a.IP}, ""
	}
	for _, ch := range live {
		if addr, ok := r.channelAddr(ctx, cfg, a.Tech, ch); ok {
			return []netip.Addr{addr}, ""
		}
	}
	if len(a.Sources) > 0 {
		return []netip.Addr{a.Sources[0]}, ""
	}
	why := "no live call"
	switch v := sourceVariable(a.Tech); {
	case len(live) > 0 && v == "":
		why = fmt.Sprintf("Asterisk gives no source address for %s channels", a.Tech)
	case len(live) > 0:
		why = fmt.Sprintf("no address from Getvar %s on its %d live channels", v, len(live))
	}
	why = fmt.Sprintf("nothing to block: %s, and no address Asterisk received a request of %s/%s from (SuccessfulAuth)", why, a.Tech, a.Extension)
	if len(a.Contacts) > 0 {
		cs := make([]string, len(a.Contacts))
		for i, c := range a.Contacts {
			cs[i] = c.String()
		}
		why += "; contact " + strings.Join(cs, ",") + " is client-supplied, not blocked"
	}
	return nil, why
}

// sourceVariable is the channel variable that holds the address Asterisk
// received a call of tech from, or "" when there is none.
func sourceVariable(tech ami.Tech) string {
	switch tech {
	case ami.TechSIP:
		return "CHANNEL(recvip)"
	case ami.TechPJSIP:
		return "CHANNEL(pjsip,remote_addr)"
	}
	return ""
}

func (r *responder) channelAddr(ctx context.Context, cfg *config.Config, tech ami.Tech, channel string) (netip.Addr, bool) {
	variable := sourceVariable(tech)
	if variable == "" {
		return netip.Addr{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(cfg.AMI.ActionTimeout))
	defer cancel()
	resp, err := r.urgent.Do(ctx, ami.Action{Name: "Getvar", Headers: []ami.Header{{Key: "Channel", Value: channel}, {Key: "Variable", Value: variable}}})
	if err != nil {
		return netip.Addr{}, false
	}
	v := resp["Value"]
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
	req := bans.Request{
		Addr: addr, TTL: time.Duration(cfg.Response.BanDuration), Extension: ext, Rule: a.Rule.String(),
		Reason: fmt.Sprintf("%s %s: %d %s", a.Rule, a.Severity, a.Count, a.Reason),
	}
	start := r.now()
	err := action.Retry(ctx, backoff(cfg), func() error {
		_, err := r.bans.Ban(ctx, req)
		return err
	})
	took := r.now().Sub(start)
	ttl := cfg.Response.BanDuration.String()
	switch {
	case errors.Is(err, bans.ErrProtected):
		r.outcome(actBlock, "skipped", a, target, took, nil, "never blocked: allow-listed, the AMI server or the guard's own address")
	case errors.Is(err, bans.ErrObserving):
		r.outcome(actBlock, "skipped", a, target, took, nil, "the mode changed to observe before the ban: nothing done")
	case err != nil:
		r.outcome(actBlock, "failed", a, target, took, err, "the ban is recorded and re-applied until the firewall accepts it")
	case !r.bans.Real():
		r.outcome(actBlock, "would", a, target, took, nil, "dry-run firewall: would drop "+target+" for "+ttl)
	default:
		r.outcome(actBlock, "done", a, target, took, nil, "dropped for "+ttl)
	}
}

// hangupSettings are the hang-up settings of cfg for the Asterisk the
// urgent session is connected to.
func (r *responder) hangupSettings(cfg *config.Config) hangup.Settings {
	return hangup.Settings{
		Cause:   cfg.Response.HangupCause,
		Regex:   hangup.RegexSupported(r.urgent.Banner()),
		Timeout: time.Duration(cfg.AMI.ActionTimeout),
		Retry:   backoff(cfg),
	}
}

// backoff is how cfg says actions are retried.
func backoff(cfg *config.Config) action.Backoff {
	return action.Backoff{Attempts: cfg.Response.RetryMax, First: time.Duration(cfg.Response.RetryBackoff)}
}

// hangupExtension hangs up every channel of the extension, and stops it:
// its new channels are hung up as they appear for the ban duration.
func (r *responder) hangupExtension(ctx context.Context, cfg *config.Config, a *detector.Alert, live []string) {
	ext := ami.Extension{Tech: a.Tech, Name: a.Extension}
	r.mu.Lock()
	r.blocked[ext] = r.now().Add(time.Duration(cfg.Response.BanDuration))
	r.mu.Unlock()
	res := r.hangup.Extension(ctx, ext, live, r.hangupSettings(cfg))
	res.Detail += "; new channels are hung up as they appear"
	r.report(a, res.Outcome)
}

// channelGone is told of every Hangup event.
func (r *responder) channelGone(channel string) { r.hangup.Gone(channel) }

// newChannel is told of every channel an extension originates: a channel of
// an extension being stopped is hung up at once.
func (r *responder) newChannel(ctx context.Context, tech ami.Tech, name, channel string) {
	ext := ami.Extension{Tech: tech, Name: name}
	r.mu.Lock()
	until, ok := r.blocked[ext]
	if ok && r.now().After(until) {
		delete(r.blocked, ext)
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
		o := r.hangup.Channel(ctx, channel, r.hangupSettings(cfg))
		o.Detail = "new channel of a stopped extension: " + o.Detail
		r.report(&detector.Alert{Tech: tech, Extension: name, Severity: detector.Critical}, o)
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
	secrets := r.secretsFile(cfg)
	actx, cancel := context.WithTimeout(ctx, 4*time.Duration(cfg.AMI.ActionTimeout))
	defer cancel()
	var plan rotation
	err := action.Retry(actx, backoff(cfg), func() error {
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
	if err := secrets.write(secretLine{Time: r.now().UTC(), Extension: ext, Secret: secret, Status: "pending"}); err != nil {
		r.outcome(actRotate, "failed", a, ext, r.now().Sub(start), err, "the secrets file "+secrets.path+" cannot be written, so the secret was not changed (it would be lost)")
		return
	}
	err = action.Retry(actx, backoff(cfg), func() error {
		_, err := r.events.Do(actx, updateAction(plan, secret))
		return err
	})
	status := "applied"
	if err != nil {
		status = "failed"
	}
	if werr := secrets.write(secretLine{Time: r.now().UTC(), Extension: ext, Secret: secret, Status: status}); werr != nil {
		r.log.Error().Err(werr).Str("extension", ext).Str("secrets_file", secrets.path).Msg("cannot record the outcome in the secrets file")
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
	detail := fmt.Sprintf("new %s in [%s] of %s, reloaded with %s; the new secret is in %s: the real phone needs it", plan.key, plan.category, plan.file, plan.reload, secrets.path)
	if len(earlier) > 0 {
		detail += "; failures from its earlier addresses " + strings.Join(earlier, ",") + " will not be blocked"
	}
	r.outcome(actRotate, "done", a, ext, took, nil, detail)
}

func (r *responder) wait() { r.wg.Wait() }
