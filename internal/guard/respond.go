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
	"github.com/astguard/astguard/internal/alert"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/metrics"
	"github.com/astguard/astguard/internal/policy"
)

// Outcome is what came of one action, as the guard logs it (message
// "action outcome") and hands it to Options.Outcomes.
type Outcome struct {
	Action policy.Action
	// Result is Done, Failed, Skipped or Would.
	Result policy.Result
	// Incident is the id of the incident the action belongs to; Rule is
	// the rule whose alert opened it.
	Incident string
	Rule     detector.Rule
	// AlertRule and Severity are the rule and severity of the alert the
	// action answers; zero for the hang-up of a stopped extension's new
	// channel, which answers no alert.
	AlertRule detector.Rule
	Severity  detector.Severity
	// Key is the incident's extension or address.
	Key policy.Key
	// Target is what was acted on: the extension, a channel, an address.
	Target string
	Took   time.Duration
	Err    error
	Detail string
}

// responder carries out what the incident book decided, off the detector
// loop. The loop decides, in the order of the alerts (incident.Book.Decide),
// and hands each alert's decisions to the responder, which never blocks it:
// the actions to carry out run in a goroutine per alert, blocking and
// hanging up in parallel, then rotating the secret once every block and
// hang-up of the incident then in flight is over. Each outcome is logged
// and reported to the book.
type responder struct {
	log      zerolog.Logger // the responder's own lines and the outcomes
	alerts   zerolog.Logger // the alert lines, as the detector's
	book     *incident.Book
	events   *client.Client // config actions (the secret's rotation)
	urgent   *client.Client // hang-ups and Getvar: never behind a slow action
	hangup   *hangup.Hanger // on urgent
	block    *block.Blocker // Getvar on urgent, bans through the ban manager
	now      func() time.Time
	metrics  *metrics.Metrics // nil: not counted
	outcomes func(Outcome)    // Options.Outcomes; nil: none
	// store is where the secrets live ([secrets]); storeTime is the time
	// its reload may take on top of the AMI actions.
	store     secret.Store
	storeTime time.Duration
	banned    func(bans.Ban) // told every ban recorded (pushed to CrowdSec); never blocks

	mu      sync.Mutex
	secrets map[string]*secret.File    // by path: the writes to one file are serialized
	fronts  map[string][]chan struct{} // by incident: its blocks and hang-ups in flight, each closed when over
	wg      sync.WaitGroup
}

func newResponder(log zerolog.Logger, book *incident.Book, events, urgent *client.Client, b *bans.Manager) *responder {
	return &responder{
		log:     log.With().Str("component", "responder").Logger(),
		alerts:  log,
		book:    book,
		events:  events,
		urgent:  urgent,
		hangup:  hangup.New(urgent),
		block:   block.New(urgent, b),
		now:     time.Now,
		secrets: make(map[string]*secret.File),
		fronts:  make(map[string][]chan struct{}),
	}
}

// response is what the responder carries out for one alert: the decisions
// to carry out (Running, all of the alert's incident, in the policy's
// order), with the alert, the extension's live channels when it came and
// the configuration then.
type response struct {
	alert detector.Alert
	live  []string
	cfg   *config.Config
	decs  []policy.Decision
}

func (rs *response) decision(act policy.Action) *policy.Decision {
	for i := range rs.decs {
		if rs.decs[i].Action == act {
			return &rs.decs[i]
		}
	}
	return nil
}

// decided is called by the detector loop with the book's decisions about
// alert a; live returns the extension's tracked channels. It logs the
// alert (with its incident), logs the outcomes the book decided itself
// (Would, Skipped), and starts the actions to carry out. It never blocks.
func (r *responder) decided(ctx context.Context, cfg *config.Config, a *detector.Alert, decs []policy.Decision, live func() []string) {
	logged := false
	var run []policy.Decision
	var channels []string
	for i := range decs {
		d := &decs[i]
		switch {
		case d.Action == policy.Alert:
			logged = true
			l := r.alerts
			if d.Incident != "" {
				l = l.With().Str("incident", d.Incident).Logger()
			}
			alert.Log(&l, a)
		case d.Result == policy.Running:
			run = append(run, *d)
		default: // Would or Skipped: the book recorded it, nothing to carry out
			if channels == nil {
				channels = live()
			}
			r.report(&Outcome{
				Action: d.Action, Result: d.Result, Incident: d.Incident, Rule: d.OpenedBy, AlertRule: a.Rule, Severity: a.Severity,
				Key: d.Key, Target: describe(d, a, channels), Detail: d.Detail,
			})
		}
	}
	if !logged {
		r.alerts.Debug().Str("rule", a.Rule.String()).Str("severity", a.Severity.String()).
			Str("extension", a.Extension).Str("reason", a.Reason).Msg("fraud alert not logged: the policy has no alert action for it")
	}
	if len(run) == 0 {
		return
	}
	if channels == nil {
		channels = live()
	}
	r.start(ctx, &response{alert: *a, live: channels, cfg: cfg, decs: run})
}

// describe says what a decision not carried out would have acted on.
func describe(d *policy.Decision, a *detector.Alert, live []string) string {
	switch d.Action {
	case policy.Hangup:
		return fmt.Sprintf("%s (%d live channels)", d.Key, len(live))
	case policy.BlockIP:
		if !d.Key.IsExtension() {
			return d.Key.Addr.String()
		}
		return block.Describe(block.Request{Extension: ami.Extension{Tech: d.Key.Tech, Name: d.Key.Name}, Live: live, Sources: a.Sources})
	}
	return d.Key.String()
}

// start carries out rs in a goroutine of its own. A rotation waits for
// the blocks and hang-ups of its incident already in flight, those of rs
// included, never the other way round.
func (r *responder) start(ctx context.Context, rs *response) {
	id := rs.decs[0].Incident
	var mine chan struct{}
	r.mu.Lock()
	prior := slices.Clone(r.fronts[id])
	if rs.decision(policy.BlockIP) != nil || rs.decision(policy.Hangup) != nil {
		mine = make(chan struct{})
		r.fronts[id] = append(r.fronts[id], mine)
	}
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.run(ctx, rs, prior, mine)
	}()
}

// run blocks and hangs up in parallel, then rotates the secret.
func (r *responder) run(ctx context.Context, rs *response, prior []chan struct{}, mine chan struct{}) {
	var blocked netip.Addr
	var wg sync.WaitGroup
	// The block's address is read from a live call's channel (Getvar), so
	// the hang-up is sent only once that Getvar is on the wire: Asterisk
	// answers it before it reads the Hangup behind it on the same session,
	// and the hang-up does not wait for the answer.
	ready := make(chan struct{})
	var once sync.Once
	choosing := func() { once.Do(func() { close(ready) }) }
	if d := rs.decision(policy.BlockIP); d != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, s := blockRequest(rs, d), blockSettings(rs.cfg)
			c := r.block.Choose(client.AfterWrite(ctx, choosing), req, s)
			choosing()
			blocked = c.Target.Addr
			r.ban(ctx, rs, d, req, c, s)
		}()
	} else {
		choosing()
	}
	if d := rs.decision(policy.Hangup); d != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-ready
			r.hangupExtension(ctx, rs, d)
		}()
	}
	wg.Wait()
	if mine != nil {
		r.frontDone(rs.decs[0].Incident, mine)
	}
	if d := rs.decision(policy.RotateSecret); d != nil {
		for _, p := range prior {
			select {
			case <-p:
			case <-ctx.Done():
			}
		}
		// The one action that must never run again after a restart: the
		// incident is saved, with the rotation running, before it starts.
		if err := r.book.Flush(); err != nil {
			r.log.Error().Str("incident", d.Incident).Err(err).
				Msg("incidents not saved before the rotation: a restart before the next save may rotate this secret again")
		}
		r.rotate(ctx, rs, d, blocked)
	}
}

// frontDone says the blocks and hang-ups of one response of incident id
// are over.
func (r *responder) frontDone(id string, ch chan struct{}) {
	close(ch)
	r.mu.Lock()
	defer r.mu.Unlock()
	fs := slices.DeleteFunc(r.fronts[id], func(c chan struct{}) bool { return c == ch })
	if len(fs) == 0 {
		delete(r.fronts, id)
		return
	}
	r.fronts[id] = fs
}

// blockRequest is what decision d of rs asks to block.
func blockRequest(rs *response, d *policy.Decision) block.Request {
	a := &rs.alert
	req := block.Request{Rule: a.Rule.String(), Reason: d.Reason, TTL: time.Duration(rs.cfg.Response.BanDuration), Incident: d.Incident}
	if !d.Key.IsExtension() {
		req.Addr = d.Key.Addr
		return req
	}
	req.Extension = ami.Extension{Tech: d.Key.Tech, Name: d.Key.Name}
	req.Live, req.Sources, req.Contacts = rs.live, a.Sources, a.Contacts
	return req
}

// ban bans the address chosen for an incident, unless another open
// incident holds it already (an extension's thief who also guesses
// passwords from the same address is banned once).
func (r *responder) ban(ctx context.Context, rs *response, d *policy.Decision, req block.Request, c block.Choice, s block.Settings) {
	if addr := c.Target.Addr; addr.IsValid() && d.Key.IsExtension() {
		if owner, ok := r.book.Owner(addr, r.now()); ok && owner.ID != d.Incident {
			r.finish(ctx, rs, d, action.Outcome{Action: action.BlockIP, Result: action.Skipped, Target: addr.String(),
				Detail: fmt.Sprintf("%s is blocked by incident %s of %s, which owns it", addr, owner.ID, owner.Key)})
			return
		}
	}
	res := r.block.Ban(ctx, req, c, s)
	if res.Ban.Prefix.IsValid() && r.banned != nil {
		r.banned(res.Ban)
	}
	r.finish(ctx, rs, d, res.Outcome)
}

// blockSettings are the block settings of cfg.
func blockSettings(cfg *config.Config) block.Settings {
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

// hangupExtension hangs up every channel of the incident's extension. The
// book has stopped the extension: while the incident is open, its new
// channels are hung up as they appear (stoppedChannel).
func (r *responder) hangupExtension(ctx context.Context, rs *response, d *policy.Decision) {
	ext := ami.Extension{Tech: d.Key.Tech, Name: d.Key.Name}
	res := r.hangup.Extension(ctx, ext, rs.live, r.hangupSettings(rs.cfg))
	res.Detail += fmt.Sprintf("; its new calls are hung up while incident %s is open (guard release %s ends it)", d.Incident, ext)
	r.finish(ctx, rs, d, res.Outcome)
}

// channelGone is told of every Hangup event.
func (r *responder) channelGone(channel string) { r.hangup.Gone(channel) }

// stoppedChannel hangs up a new channel of an extension the book has
// stopped (its incident decided to hang up its calls), naming the
// incident. In observe mode it only says so.
func (r *responder) stoppedChannel(ctx context.Context, cfg *config.Config, stop incident.Stop, ext ami.Extension, channel string) {
	o := Outcome{Action: policy.Hangup, Incident: stop.Incident, Rule: stop.Rule, Key: policy.ExtensionKey(ext.Tech, ext.Name), Target: channel}
	what := "new channel of " + ext.String() + ", stopped by incident " + stop.Incident
	if cfg.Mode != config.ModeEnforce {
		o.Result, o.Detail = policy.Would, what+"; mode is observe: nothing done"
		r.report(&o)
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		res := r.hangup.Channel(ctx, channel, r.hangupSettings(cfg))
		o.Result, o.Took, o.Err, o.Detail = resultOf(res.Result), res.Took, res.Err, what
		if res.Detail != "" {
			o.Detail += ": " + res.Detail
		}
		r.report(&o)
	}()
}

// secretsFile returns the secrets file of cfg (response.secrets_file). A
// rotation takes it once, so its lines and every message about its secret
// name the same file, even when a reload changes the key meanwhile.
func (r *responder) secretsFile(cfg *config.Config) *secret.File {
	r.mu.Lock()
	defer r.mu.Unlock()
	path := cfg.Response.SecretsFile
	f, ok := r.secrets[path]
	if !ok {
		f = secret.NewFile(path)
		r.secrets[path] = f
	}
	return f
}

// rotate gives the extension a new secret (where the secret store of
// [secrets] keeps it, checked, and into the secrets file for the
// administrator), then keeps the extension's earlier addresses, other
// than those blocked, from being blocked for the real phone's failures
// with the old secret.
func (r *responder) rotate(ctx context.Context, rs *response, d *policy.Decision, blocked netip.Addr) {
	cfg := rs.cfg
	ext := ami.Extension{Tech: d.Key.Tech, Name: d.Key.Name}
	rot := secret.Rotator{Store: r.store, Now: r.now}
	timeout := 4*time.Duration(cfg.AMI.ActionTimeout) + r.storeTime
	res := rot.Rotate(ctx, ext, r.secretsFile(cfg), secret.Settings{Timeout: timeout, Retry: backoff(cfg)})
	if res.RecordErr != nil {
		r.log.Error().Err(res.RecordErr).Str("extension", ext.String()).Str("secrets_file", res.SecretsFile).Msg("cannot record the outcome in the secrets file")
	}
	if res.Result == action.Done {
		var earlier []netip.Addr
		if p := time.Duration(cfg.Response.ProtectPreviousSources); p > 0 {
			now := r.now()
			for _, s := range rs.alert.Sources {
				s = s.Unmap()
				if _, owned := r.book.Owner(s, now); s == blocked || owned || slices.Contains(earlier, s) {
					continue // blocked: the thief's
				}
				earlier = append(earlier, s)
			}
			r.block.Protect(ext.String(), earlier, now.Add(p))
		}
		if len(earlier) > 0 {
			s := make([]string, len(earlier))
			for i, e := range earlier {
				s[i] = e.String()
			}
			res.Detail += "; failures from its earlier addresses " + strings.Join(s, ",") + " will not be blocked"
		}
	}
	r.finish(ctx, rs, d, res.Outcome)
}

// interrupted is added to the detail of an action that failed because the
// guard was stopping: it is not reported to its incident, so the book
// keeps it as running, and a restarted guard never runs it again in the
// incident.
const interrupted = "the guard stopped while this action ran: it is not run again in this incident; see whether it took effect"

// finish reports the outcome of decision d of rs to the incident book,
// then logs it.
func (r *responder) finish(ctx context.Context, rs *response, d *policy.Decision, o action.Outcome) {
	out := Outcome{
		Action: d.Action, Result: resultOf(o.Result), Incident: d.Incident, Rule: d.OpenedBy,
		AlertRule: rs.alert.Rule, Severity: rs.alert.Severity, Key: d.Key,
		Target: o.Target, Took: o.Took, Err: o.Err, Detail: o.Detail,
	}
	if out.Result == policy.Failed && ctx.Err() != nil {
		out.Detail = joinDetail(out.Detail, interrupted)
	} else if err := r.book.Outcome(d.Incident, d.Action, incident.Outcome{Result: out.Result, Target: o.Target, Time: r.now(), Detail: o.Detail, Error: errText(o.Err)}); err != nil {
		r.log.Error().Err(err).Str("incident", d.Incident).Str("action", d.Action.String()).
			Msg("action outcome not recorded in its incident: a restart may run the action again")
	}
	r.report(&out)
}

// errText is err's text, or "" for none.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func joinDetail(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// resultOf is the policy's result of an action's.
func resultOf(r action.Result) policy.Result {
	switch r {
	case action.Done:
		return policy.Done
	case action.Skipped:
		return policy.Skipped
	case action.Would:
		return policy.Would
	}
	return policy.Failed
}

// report logs an outcome as a line of its own, counts it, and hands it to
// Options.Outcomes.
func (r *responder) report(o *Outcome) {
	r.metrics.Action(o.Action.String(), o.Result.String(), o.Took)
	ev := r.log.Warn()
	switch o.Result {
	case policy.Failed:
		ev = r.log.Error()
	case policy.Would, policy.Skipped:
		ev = r.log.Info()
	}
	ev = ev.Str("action", o.Action.String()).Str("result", o.Result.String()).Str("rule", o.Rule.String())
	if o.AlertRule != 0 && o.AlertRule != o.Rule {
		ev = ev.Str("alert_rule", o.AlertRule.String())
	}
	if o.Severity != 0 {
		ev = ev.Str("severity", o.Severity.String())
	}
	ev = ev.Str("incident", o.Incident)
	if o.Key.IsExtension() {
		ev = ev.Str("tech", o.Key.Tech.String()).Str("extension", o.Key.Name)
	} else {
		ev = ev.Str("ip", o.Key.Addr.String())
	}
	if o.Target != "" {
		ev = ev.Str("target", o.Target)
	}
	if o.Took > 0 {
		ev = ev.Float64("took_ms", float64(o.Took.Microseconds())/1000)
	}
	if o.Err != nil {
		ev = ev.Str("error", o.Err.Error())
	}
	if o.Detail != "" {
		ev = ev.Str("detail", o.Detail)
	}
	ev.Msg("action outcome")
	if r.outcomes != nil {
		r.outcomes(*o)
	}
}

func (r *responder) wait() { r.wg.Wait() }
