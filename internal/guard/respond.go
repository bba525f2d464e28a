package guard

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/action/block"
	"github.com/astguard/astguard/internal/action/hangup"
	"github.com/astguard/astguard/internal/action/secret"
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

// responder turns critical alerts into actions, as the policy says.
type responder struct {
	log     zerolog.Logger
	events  *client.Client // config actions (the secret's rotation)
	urgent  *client.Client // hang-ups and Getvar: never behind a slow action
	hangup  *hangup.Hanger // on urgent
	block   *block.Blocker // Getvar on urgent, bans through the ban manager
	now     func() time.Time
	metrics *metrics.Metrics // nil: not counted

	mu       sync.Mutex
	cfg      *config.Config
	blocked  map[ami.Extension]time.Time // extension -> its new channels are hung up until then
	inflight map[string]bool             // incident key -> being handled
	pending  map[string]pendingResponse
	secrets  map[string]*secretsFile // by path: the writes to one file are serialized
	wg       sync.WaitGroup
}

func newResponder(cfg *config.Config, log zerolog.Logger, events, urgent *client.Client, b *bans.Manager) *responder {
	return &responder{
		log:      log.With().Str("component", "responder").Logger(),
		events:   events,
		urgent:   urgent,
		hangup:   hangup.New(urgent),
		block:    block.New(urgent, b),
		now:      time.Now,
		secrets:  make(map[string]*secretsFile),
		cfg:      cfg,
		blocked:  make(map[ami.Extension]time.Time),
		inflight: make(map[string]bool),
		pending:  make(map[string]pendingResponse),
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

// Record writes l to the file: the secret package's Recorder.
func (f *secretsFile) Record(l secret.Line) (string, error) {
	return f.path, f.write(secretLine{Time: l.Time, Extension: l.Extension, Secret: l.Secret, Status: string(l.Status)})
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
		return block.Describe(blockRequest(nil, a, live))
	}
	return ""
}

// respond blocks and hangs up in parallel, then rotates the secret.
func (r *responder) respond(ctx context.Context, cfg *config.Config, a detector.Alert, todo []string, live []string) {
	do := func(act string) bool { return slices.Contains(todo, act) }
	var blocked []netip.Addr
	var wg sync.WaitGroup
	if do(actBlock) {
		// Chosen before the hang-up: a live call's address is read from
		// its channel.
		req, s := blockRequest(cfg, &a, live), r.blockSettings(cfg)
		c := r.block.Choose(ctx, req, s)
		if c.Target.Addr.IsValid() {
			blocked = append(blocked, c.Target.Addr)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.report(&a, r.block.Ban(ctx, req, c, s).Outcome)
		}()
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
		r.rotate(ctx, cfg, &a, blocked)
	}
}

// blockRequest is what alert a says about what to block (nil cfg: the
// ban's duration left out).
func blockRequest(cfg *config.Config, a *detector.Alert, live []string) block.Request {
	req := block.Request{
		Rule:   a.Rule.String(),
		Reason: fmt.Sprintf("%s %s: %d %s", a.Rule, a.Severity, a.Count, a.Reason),
	}
	if cfg != nil {
		req.TTL = time.Duration(cfg.Response.BanDuration)
	}
	if !a.IsExtension() {
		req.Addr = a.IP
		return req
	}
	req.Extension = ami.Extension{Tech: a.Tech, Name: a.Extension}
	req.Live, req.Sources, req.Contacts = live, a.Sources, a.Contacts
	return req
}

// blockSettings are the block settings of cfg.
func (r *responder) blockSettings(cfg *config.Config) block.Settings {
	return block.Settings{Timeout: time.Duration(cfg.AMI.ActionTimeout), Retry: backoff(cfg)}
}

// hangupSettings are the hang-up settings of cfg for the Asterisk the
// urgent session is connected to.
func (r *responder) hangupSettings(cfg *config.Config) hangup.Settings {
	return hangup.Settings{
		Cause:   cfg.Response.HangupCause,
		Regex:   hangup.RegexSupported(r.urgent.Version()),
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

// rotate gives the extension a new secret (into sip.conf or pjsip.conf by
// UpdateConfig with a reload, and into the secrets file for the
// administrator), then keeps the extension's earlier addresses, other
// than those just blocked, from being blocked for the real phone's
// failures with the old secret.
func (r *responder) rotate(ctx context.Context, cfg *config.Config, a *detector.Alert, blocked []netip.Addr) {
	ext := ami.Extension{Tech: a.Tech, Name: a.Extension}
	rot := secret.Rotator{Store: secret.ConfigFiles{Doer: r.events}, Now: r.now}
	res := rot.Rotate(ctx, ext, r.secretsFile(cfg), secret.Settings{Timeout: 4 * time.Duration(cfg.AMI.ActionTimeout), Retry: backoff(cfg)})
	if res.RecordErr != nil {
		r.log.Error().Err(res.RecordErr).Str("extension", ext.String()).Str("secrets_file", res.SecretsFile).Msg("cannot record the outcome in the secrets file")
	}
	if res.Result == action.Done {
		var earlier []netip.Addr
		if p := time.Duration(cfg.Response.ProtectPreviousSources); p > 0 {
			for _, s := range a.Sources {
				if !slices.Contains(blocked, s) {
					earlier = append(earlier, s)
				}
			}
			r.block.Protect(ext.String(), earlier, r.now().Add(p))
		}
		if len(earlier) > 0 {
			s := make([]string, len(earlier))
			for i, e := range earlier {
				s[i] = e.String()
			}
			res.Detail += "; failures from its earlier addresses " + strings.Join(s, ",") + " will not be blocked"
		}
	}
	r.report(a, res.Outcome)
}

func (r *responder) wait() { r.wg.Wait() }
