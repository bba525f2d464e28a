// Package crowdsec links the guard to a CrowdSec Local API (LAPI), so that
// a ban on one PBX holds on every PBX of a fleet.
//
// Push: every ban the guard decides itself becomes a CrowdSec alert with
// its decision (scope Ip or Range, the ban's remaining duration, scenario
// "astguard/<rule>", origin "astguard"), sent as a machine (watcher) whose
// JWT is renewed before it expires and when the LAPI refuses it. A dry-run
// ban is sent as a simulated alert, which the LAPI keeps but gives to no
// bouncer.
//
// Pull: as a bouncer, the guard reads the decision stream every pull
// interval (every active decision first, then what changed) and bans what
// the selected decisions say, as bans of origin "crowdsec", through the
// same never-block checks as its own bans and within the configured
// widest ranges; a decision deleted upstream lifts the ban it made. A
// decision of this guard's own (scenario "astguard/..." for an address it
// banned itself) is recognised and not applied again.
//
// In observe mode nothing is pushed, nothing is banned or lifted: the
// pulled decisions are only logged as "would". The LAPI failing never
// stops the guard: each part counts its failures, says at warn when it
// starts failing and at info when it works again, retries with backoff,
// and shows its state in /healthz and the metrics.
package crowdsec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"
	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/hostaddr"
)

// ScenarioPrefix starts the scenario of every alert the guard pushes:
// "astguard/" and the rule, e.g. "astguard/prefix_guess".
const ScenarioPrefix = "astguard/"

// OriginAstguard is the origin of the decisions the guard pushes.
const OriginAstguard = "astguard"

// Banner records and lifts bans: *bans.Manager fits.
type Banner interface {
	Ban(ctx context.Context, req bans.Request) (bans.Ban, error)
	UnbanOrigin(ctx context.Context, p netip.Prefix, origin string) error
	List() []bans.Ban
}

// Options configure New.
type Options struct {
	// URL is the LAPI's base URL (crowdsec.url).
	URL string
	// Timeout bounds one request; default 10s.
	Timeout time.Duration
	// Push and Pull turn the two parts on.
	Push, Pull bool
	// MachineID and Password log the machine in (Push).
	MachineID, Password string
	// APIKey is the bouncer's key (Pull).
	APIKey string
	// PullInterval is the pause between two pulls; default 10s.
	PullInterval time.Duration
	// The decision stream's filters (crowdsec.scenarios_containing ...).
	ScenariosContaining, ScenariosNotContaining, Origins []string
	// WidestIPv4 and WidestIPv6 are the shortest prefix lengths of a
	// range decision applied.
	WidestIPv4, WidestIPv6 int
	// Bans applies and lifts the pulled decisions' bans and tells the
	// guard's own bans. Required with Pull.
	Bans Banner
	// Protected returns the networks never banned (the guard's list),
	// read at every pull. The LAPI's own addresses are added to it.
	Protected func() []netip.Prefix
	// Enforcing reports whether the guard is in enforce mode, read for
	// every ban pushed and every pull. Required.
	Enforcing func() bool
	// Logger gets the component's lines.
	Logger zerolog.Logger
	// UserAgent is sent with every request: "astguard/" and the version
	// (default "astguard/dev"). It must hold a slash: a Local API 1.4
	// takes the machine's version from after it, and refuses a login
	// without one as a wrong password.
	UserAgent string
	// MaxBody bounds what is read of an answer; default 32 MiB.
	MaxBody int64
	// MaxBackoff bounds the pause between retries; default 1m.
	MaxBackoff time.Duration
	// QueueSize bounds the bans waiting to be pushed; default 10000.
	QueueSize int
	// LookupNetIP resolves the LAPI's host; default
	// net.DefaultResolver.LookupNetIP.
	LookupNetIP func(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Defaults of Options.
const (
	defaultTimeout      = 10 * time.Second
	defaultPullInterval = 10 * time.Second
	defaultMaxBody      = 32 << 20
	defaultMaxBackoff   = time.Minute
	defaultQueueSize    = 10000
	firstBackoff        = time.Second
	// permanent is the duration pushed for a ban without an end.
	permanent = 10 * 365 * 24 * time.Hour
	// logPerPull bounds the decisions logged one by one per pull and kind
	// (would, refused): the pull's summary line counts them all.
	logPerPull = 20
)

// Service is the guard's CrowdSec link: Run runs it, Banned hands it the
// guard's bans. Safe for concurrent use.
type Service struct {
	opts   Options
	base   *url.URL
	api    *lapi
	log    zerolog.Logger
	now    func() time.Time
	lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)

	push, pull *link

	qmu      sync.Mutex
	queue    []bans.Ban
	pushWake chan struct{}

	lapiMu   sync.Mutex
	lapiNets []netip.Prefix // the LAPI's addresses and ours towards it
	resolved bool

	tmu     sync.Mutex
	tracked map[netip.Prefix]*Tracked // the decisions pulled, by target

	stats counters
}

// counters are the figures the metrics publish.
type counters struct {
	alertsSent, alertsRejected, alertsDropped, alertsExpired atomic.Uint64
	decisions                                                [numResults]atomic.Uint64
	refused                                                  [numRefusals]atomic.Uint64
	pullsOK                                                  atomic.Uint64
}

// Result is what the guard did with a pulled decision.
type Result int

// The results of a pulled decision.
const (
	Applied Result = iota // banned (or an existing ban extended)
	Would                 // observe mode: logged, nothing banned
	Own                   // this guard's own decision: not applied again
	Ignored               // not a ban, not an address or range, or expired
	Refused               // refused (see Reason): counted and logged at warn
	Lifted                // deleted upstream: its ban lifted
	numResults
)

var resultNames = [numResults]string{"applied", "would", "own", "ignored", "refused", "lifted"}

func (r Result) String() string {
	if r >= 0 && r < numResults {
		return resultNames[r]
	}
	return "unknown"
}

// refusals are the Reasons of Refused, in the order of stats.refused.
var refusals = [...]Reason{RefusedMalformed, RefusedTooWide, RefusedProtected, RefusedOversized}

const numRefusals = len(refusals)

// Tracked is the decision the guard holds for a target (the LAPI streams
// one per target: its longest) and what it did with it.
type Tracked struct {
	Decision
	// Result is Applied, Would or Own.
	Result Result
	// Pull is the number of the successful pull that brought it (1 for
	// the first).
	Pull uint64
}

// New checks opts and returns a Service; Run starts it.
func New(opts Options) (*Service, error) {
	if !opts.Push && !opts.Pull {
		return nil, errors.New("crowdsec: neither push nor pull is on")
	}
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, errors.New("crowdsec: the URL must be http:// or https:// with a host and no credentials")
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	if opts.Enforcing == nil {
		return nil, errors.New("crowdsec: Options.Enforcing is required")
	}
	if opts.Pull && opts.Bans == nil {
		return nil, errors.New("crowdsec: Options.Bans is required to pull")
	}
	if opts.Push && (opts.MachineID == "" || opts.Password == "") {
		return nil, errors.New("crowdsec: push needs the machine's id and password")
	}
	if opts.Pull && opts.APIKey == "" {
		return nil, errors.New("crowdsec: pull needs the bouncer's API key")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = defaultTimeout
	}
	if opts.PullInterval <= 0 {
		opts.PullInterval = defaultPullInterval
	}
	if opts.MaxBody <= 0 {
		opts.MaxBody = defaultMaxBody
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = defaultMaxBackoff
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = defaultQueueSize
	}
	if !strings.Contains(opts.UserAgent, "/") {
		opts.UserAgent = "astguard/dev"
	}
	if opts.Protected == nil {
		opts.Protected = func() []netip.Prefix { return nil }
	}
	api, err := newLAPI(&opts, u, http.DefaultTransport.(*http.Transport).Clone())
	if err != nil {
		return nil, err
	}
	log := opts.Logger.With().Str("component", "crowdsec").Logger()
	s := &Service{
		opts:     opts,
		base:     u,
		api:      api,
		log:      log,
		now:      time.Now,
		lookup:   opts.LookupNetIP,
		pushWake: make(chan struct{}, 1),
		tracked:  make(map[netip.Prefix]*Tracked),
	}
	if s.lookup == nil {
		s.lookup = net.DefaultResolver.LookupNetIP
	}
	if opts.Push {
		s.push = newLink("push", log)
	}
	if opts.Pull {
		s.pull = newLink("pull", log)
	}
	return s, nil
}

// Scenarios are the scenarios of the alerts the guard pushes, one per
// detector rule: the machine names them at login.
func Scenarios() []string {
	var out []string
	for r := detector.Rule(1); r.String() != detector.Rule(0).String(); r++ {
		out = append(out, ScenarioPrefix+r.String())
	}
	return out
}

// Run runs the parts that are on until ctx ends; it returns nil then.
func (s *Service) Run(ctx context.Context) error {
	s.log.Info().Str("url", s.base.String()).Bool("push", s.opts.Push).Bool("pull", s.opts.Pull).
		Dur("pull_interval", s.opts.PullInterval).Msg("CrowdSec link starting")
	var wg sync.WaitGroup
	if s.opts.Push {
		wg.Go(func() { s.pushLoop(ctx) })
	}
	if s.opts.Pull {
		wg.Go(func() { s.pullLoop(ctx) })
	}
	wg.Wait()
	return nil
}

// nextBackoff doubles d, from firstBackoff up to MaxBackoff.
func (s *Service) nextBackoff(d time.Duration) time.Duration {
	if d <= 0 {
		return min(firstBackoff, s.opts.MaxBackoff)
	}
	return min(2*d, s.opts.MaxBackoff)
}

// sleep waits d, or less when ctx ends or wake (if not nil) fires; it
// reports whether ctx is still going.
func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-wake:
	}
	return true
}

// ---- push ----

// Banned hands the guard a ban it made, to push. It never blocks: the
// ban waits in a bounded queue (when full the oldest is dropped, counted
// and logged). Bans of another origin than this guard's, and any ban in
// observe mode, are not pushed.
func (s *Service) Banned(b bans.Ban) {
	if s == nil || !s.opts.Push || b.Origin != bans.OriginAstguard || !s.opts.Enforcing() {
		return
	}
	s.qmu.Lock()
	dropped := false
	if len(s.queue) >= s.opts.QueueSize {
		s.queue = slices.Delete(s.queue, 0, 1)
		dropped = true
	}
	s.queue = append(s.queue, b)
	s.qmu.Unlock()
	if dropped {
		s.droppedAlerts(1)
	}
	select {
	case s.pushWake <- struct{}{}:
	default:
	}
}

// droppedAlerts counts n bans dropped from the full queue, saying so at
// 1, 2, 4, 8 ... drops: loud, not once per ban.
func (s *Service) droppedAlerts(n uint64) {
	total := s.stats.alertsDropped.Add(n)
	if bits.Len64(total) > bits.Len64(total-n) {
		s.log.Warn().Uint64("dropped", total).Int("queue", s.opts.QueueSize).
			Msg("CrowdSec push queue full: the oldest bans waiting were dropped, they are not sent")
	}
}

// pushLoop logs the machine in at once (so that wrong credentials show
// from the start), then sends the queued bans as they come, retrying
// with backoff while the LAPI fails.
func (s *Service) pushLoop(ctx context.Context) {
	loggedIn := false
	var backoff time.Duration
	for {
		var err error
		answered := false
		if !loggedIn {
			lctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
			err = s.api.login(lctx, s.opts.MachineID, s.opts.Password)
			cancel()
			s.push.count(err)
			loggedIn, answered = err == nil, err == nil
		}
		if err == nil {
			var sent bool
			sent, err = s.flush(ctx)
			answered = answered || sent
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.push.failure(err)
			backoff = s.nextBackoff(backoff)
			if !sleep(ctx, backoff, nil) {
				return
			}
			continue
		}
		if answered {
			s.push.success()
		}
		backoff = 0
		if !sleep(ctx, time.Hour, s.pushWake) {
			return
		}
	}
}

// maxPushBody bounds the JSON of one push: the client library compresses
// a larger body, which Local APIs before 1.5 cannot read.
const maxPushBody = 4 << 10

// flush sends the queued bans and reports whether the LAPI answered a
// request. On an error worth retrying the alerts go back to the front of
// the queue and the error is returned; alerts the LAPI refuses are
// dropped, counted and logged at error.
func (s *Service) flush(ctx context.Context) (answered bool, err error) {
	for {
		batch, alerts := s.nextBatch()
		if len(batch) == 0 {
			return answered, nil
		}
		if len(alerts) == 0 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
		err := s.api.pushAlerts(rctx, alerts)
		cancel()
		s.push.count(err)
		var ae *apiError
		switch {
		case err == nil:
			answered = true
			s.stats.alertsSent.Add(uint64(len(alerts)))
			for _, a := range alerts {
				s.log.Debug().Str("ip", *a.Source.Value).Str("scenario", *a.Scenario).Bool("simulated", *a.Simulated).
					Str("duration", *a.Decisions[0].Duration).Msg("ban pushed to CrowdSec")
			}
		case errors.As(err, &ae) && !ae.retryable():
			answered = true
			s.stats.alertsRejected.Add(uint64(len(alerts)))
			s.log.Error().Err(err).Int("alerts", len(alerts)).Msg("CrowdSec refused the alerts of bans: they are not sent")
		default:
			s.qmu.Lock()
			s.queue = append(batch, s.queue...)
			over := len(s.queue) - s.opts.QueueSize
			if over > 0 {
				s.queue = slices.Delete(s.queue, 0, over)
			}
			s.qmu.Unlock()
			if over > 0 {
				s.droppedAlerts(uint64(over))
			}
			return answered, err
		}
	}
}

// nextBatch takes from the queue the bans of the next push and returns
// them with their alerts (bans already over have none and are counted
// expired): as many as fit in maxPushBody, one at least.
func (s *Service) nextBatch() ([]bans.Ban, models.AddAlertsRequest) {
	now := s.now()
	s.qmu.Lock()
	defer s.qmu.Unlock()
	var alerts models.AddAlertsRequest
	size, n := 0, 0
	for n < len(s.queue) {
		a, ok := alertOf(s.queue[n], now)
		if !ok {
			s.stats.alertsExpired.Add(1)
			n++
			continue
		}
		raw, _ := json.Marshal(a)
		if len(alerts) > 0 && size+len(raw) > maxPushBody {
			break
		}
		size += len(raw) + 1
		alerts = append(alerts, a)
		n++
	}
	batch := slices.Clone(s.queue[:n])
	s.queue = slices.Delete(s.queue, 0, n)
	return batch, alerts
}

// alertOf is the alert of ban b, pushed at now; false when the ban is
// over. Its decision lasts what is left of the ban.
func alertOf(b bans.Ban, now time.Time) (*models.Alert, bool) {
	left := permanent
	if !b.Permanent() {
		left = b.Until.Sub(now).Round(time.Second)
		if left <= 0 {
			return nil, false
		}
	}
	rule := b.Rule
	if rule == "" {
		rule = "ban"
	}
	rule = clean(rule, 40)
	target := b.Target()
	src := &models.Source{Scope: ptr(ScopeIP), Value: ptr(target), IP: target}
	if !b.Prefix.IsSingleIP() {
		src = &models.Source{Scope: ptr(ScopeRange), Value: ptr(target), Range: target}
	}
	since := b.Since.UTC().Format(time.RFC3339)
	meta := models.Meta{{Key: "service", Value: "asterisk"}, {Key: "astguard_rule", Value: rule}}
	if b.Incident != "" {
		meta = append(meta, &models.MetaItems0{Key: "astguard_incident", Value: clean(b.Incident, 40)})
	}
	scenario := ScenarioPrefix + rule
	return &models.Alert{
		Scenario:        ptr(scenario),
		ScenarioHash:    ptr(""),
		ScenarioVersion: ptr("1"),
		Message:         ptr(clean(fmt.Sprintf("astguard banned %s: %s", target, b.Reason), 300)),
		EventsCount:     ptr(int32(1)),
		Capacity:        ptr(int32(0)),
		Leakspeed:       ptr("0"),
		StartAt:         ptr(since),
		StopAt:          ptr(now.UTC().Format(time.RFC3339)),
		Simulated:       ptr(b.DryRun),
		Remediation:     true,
		Source:          src,
		Events:          []*models.Event{{Timestamp: ptr(since), Meta: meta}},
		Decisions: []*models.Decision{{
			Origin:    ptr(OriginAstguard),
			Type:      ptr(decisionBan),
			Scope:     src.Scope,
			Value:     ptr(target),
			Duration:  ptr(left.String()),
			Scenario:  ptr(scenario),
			Simulated: ptr(b.DryRun),
		}},
	}, true
}

func ptr[T any](v T) *T { return &v }

// ---- pull ----

// pullLoop pulls the decision stream every PullInterval: the first
// successful pull, and the first after observe mode ends, ask for every
// active decision (startup), the others for what changed.
func (s *Service) pullLoop(ctx context.Context) {
	startup := true
	enforcingBefore := s.opts.Enforcing()
	var backoff, delay time.Duration
	for {
		if !sleep(ctx, delay, nil) {
			return
		}
		enforcing := s.opts.Enforcing()
		if enforcing && !enforcingBefore {
			startup = true // what observe mode only logged is applied now
		}
		enforcingBefore = enforcing
		s.resolveLAPI(ctx)
		rctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
		resp, err := s.api.stream(rctx, startup)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.pull.count(err)
		if err != nil {
			switch problemOf(err) {
			case ProblemOversized:
				s.refuse(RefusedOversized)
			case ProblemMalformed:
				s.refuse(RefusedMalformed)
			}
			s.pull.failure(err)
			backoff = s.nextBackoff(backoff)
			delay = backoff
			continue
		}
		s.pull.success()
		backoff, delay = 0, s.opts.PullInterval
		n := s.stats.pullsOK.Load() + 1
		s.apply(ctx, resp, startup, enforcing, n)
		s.stats.pullsOK.Store(n) // counted once carried out
		startup = false
	}
}

// refuse counts a refusal.
func (s *Service) refuse(r Reason) {
	s.stats.decisions[Refused].Add(1)
	if i := slices.Index(refusals[:], r); i >= 0 {
		s.stats.refused[i].Add(1)
	}
}

// summary counts what one pull did, for its log line.
type summary struct {
	n               [numResults]int
	new, deleted    int
	loggedWould     int
	loggedRefused   int
	refusedByReason map[Reason]int
}

// apply carries out one answer of the stream: the deleted decisions
// first, then the new ones; a target deleted and new in the same answer
// keeps its ban. After a startup pull in enforce mode, a ban of origin
// crowdsec that no active decision holds any more (deleted while the
// guard was stopped or observing) is lifted.
func (s *Service) apply(ctx context.Context, resp *models.DecisionsStreamResponse, startup, enforcing bool, pull uint64) {
	now := s.now()
	lim := Limits{WidestIPv4: s.opts.WidestIPv4, WidestIPv6: s.opts.WidestIPv6, Protected: s.protected()}
	own := make(map[netip.Prefix]bool)
	for _, b := range s.opts.Bans.List() {
		if b.Origin == bans.OriginAstguard {
			own[b.Prefix] = true
		}
	}
	sum := summary{new: len(resp.New), deleted: len(resp.Deleted), refusedByReason: map[Reason]int{}}
	if startup {
		// Every active decision comes again: what was tracked is known
		// afresh.
		s.tmu.Lock()
		clear(s.tracked)
		s.tmu.Unlock()
	}

	renewed := make(map[netip.Prefix]bool, len(resp.New))
	for _, d := range resp.New {
		if d != nil {
			if p, r, _ := target(d); r == "" {
				renewed[p] = true
			}
		}
	}
	for _, d := range resp.Deleted {
		if d != nil {
			s.deleted(ctx, d, enforcing, renewed, &sum)
		}
	}
	for _, d := range resp.New {
		if !s.added(ctx, d, now, &lim, own, enforcing, pull, &sum) {
			return // the ban manager is closed: the guard is stopping
		}
	}
	if startup && enforcing {
		s.reconcile(ctx, &sum)
	}

	ev := s.log.Info()
	if sum.new+sum.deleted == 0 {
		ev = s.log.Debug()
	}
	ev = ev.Uint64("pull", pull).Bool("startup", startup).Int("new", sum.new).Int("deleted", sum.deleted)
	for r := Result(0); r < numResults; r++ {
		ev = ev.Int(r.String(), sum.n[r])
	}
	for r, n := range sum.refusedByReason {
		ev = ev.Int("refused_"+string(r), n)
	}
	if !enforcing {
		ev = ev.Str("mode", "observe")
	}
	ev.Msg("CrowdSec decisions pulled")
}

// added handles one new decision; false when the guard is stopping.
func (s *Service) added(ctx context.Context, d *models.Decision, now time.Time, lim *Limits, own map[netip.Prefix]bool, enforcing bool, pull uint64, sum *summary) bool {
	if ctx.Err() != nil {
		return false
	}
	dec, reason, detail := check(d, now, lim)
	switch reason {
	case "":
	case IgnoredType, IgnoredScope, IgnoredExpired:
		s.result(Ignored, sum)
		s.log.Debug().Int64("decision", dec.ID).Str("why", string(reason)).Str("detail", detail).Msg("CrowdSec decision ignored")
		return true
	default:
		s.refused(dec, reason, detail, sum)
		return true
	}

	t := &Tracked{Decision: dec, Pull: pull}
	switch {
	case strings.HasPrefix(dec.Scenario, ScenarioPrefix) && own[dec.Prefix]:
		t.Result = Own
		s.log.Debug().Int64("decision", dec.ID).Str("ip", dec.Target()).Str("scenario", dec.Scenario).
			Msg("CrowdSec decision is this guard's own ban: not applied again")
	case !enforcing:
		t.Result = Would
		if sum.loggedWould < logPerPull {
			sum.loggedWould++
			s.decisionLine(s.log.Info(), &dec).Str("result", Would.String()).
				Msg("CrowdSec decision not applied: mode is observe, it would be banned")
		}
	default:
		_, err := s.opts.Bans.Ban(ctx, bans.Request{
			Prefix: dec.Prefix,
			TTL:    max(dec.Until.Sub(s.now()), time.Second),
			Origin: bans.OriginCrowdSec,
			Reason: fmt.Sprintf("CrowdSec decision %d: %s (origin %s)", dec.ID, dec.Scenario, dec.Origin),
		})
		switch {
		case errors.Is(err, bans.ErrProtected):
			s.refused(dec, RefusedProtected, "the ban manager protects it", sum)
			return true
		case errors.Is(err, bans.ErrObserving):
			t.Result = Would
		case errors.Is(err, bans.ErrClosed), errors.Is(err, bans.ErrNotStarted):
			return false
		default:
			// Recorded: a firewall or state-file failure is retried by
			// the ban manager, which logs it.
			t.Result = Applied
			s.decisionLine(s.log.Debug(), &dec).AnErr("ban_error", err).Msg("CrowdSec decision applied")
		}
	}
	s.result(t.Result, sum)
	s.tmu.Lock()
	if old, ok := s.tracked[dec.Prefix]; !ok || old.Result != Applied || t.Result == Applied {
		s.tracked[dec.Prefix] = t
	}
	s.tmu.Unlock()
	return true
}

func (s *Service) decisionLine(ev *zerolog.Event, d *Decision) *zerolog.Event {
	return ev.Int64("decision", d.ID).Str("ip", d.Target()).Str("scenario", d.Scenario).Str("origin", d.Origin).Time("until", d.Until)
}

// refused counts and logs a refused decision.
func (s *Service) refused(d Decision, r Reason, detail string, sum *summary) {
	s.refuse(r)
	sum.n[Refused]++
	sum.refusedByReason[r]++
	if sum.loggedRefused < logPerPull {
		sum.loggedRefused++
		ev := s.log.Warn().Int64("decision", d.ID).Str("why", string(r)).Str("detail", detail)
		if d.Scenario != "" {
			ev = ev.Str("scenario", d.Scenario).Str("origin", d.Origin)
		}
		ev.Msg("CrowdSec decision refused")
	}
}

func (s *Service) result(r Result, sum *summary) {
	s.stats.decisions[r].Add(1)
	sum.n[r]++
}

// deleted handles a decision deleted upstream or expired: its target has
// no decision left, and the ban a decision made of it is lifted, unless
// a new decision for it came in the same answer (renewed).
func (s *Service) deleted(ctx context.Context, d *models.Decision, enforcing bool, renewed map[netip.Prefix]bool, sum *summary) {
	p, reason, _ := target(d)
	if reason != "" {
		return // nothing the guard could have banned
	}
	s.tmu.Lock()
	t, ok := s.tracked[p]
	if ok {
		delete(s.tracked, p)
	}
	s.tmu.Unlock()
	if !ok || t.Result != Applied || renewed[p] {
		return
	}
	if !enforcing {
		s.decisionLine(s.log.Info(), &t.Decision).
			Msg("CrowdSec decision deleted: mode is observe, its ban stays until the guard enforces")
		return
	}
	s.lift(ctx, p, fmt.Sprintf("decision %d deleted", d.ID), sum)
}

// lift lifts the crowdsec ban of p.
func (s *Service) lift(ctx context.Context, p netip.Prefix, why string, sum *summary) {
	err := s.opts.Bans.UnbanOrigin(ctx, p, bans.OriginCrowdSec)
	switch {
	case errors.Is(err, bans.ErrNotBanned):
		// Expired, lifted by hand, or this guard's own ban now.
	case err != nil:
		s.log.Warn().Str("ip", bans.Ban{Prefix: p}.Target()).Str("why", why).Err(err).Msg("CrowdSec ban lifted with an error")
		s.result(Lifted, sum)
	default:
		s.log.Info().Str("ip", bans.Ban{Prefix: p}.Target()).Str("why", why).Msg("CrowdSec ban lifted")
		s.result(Lifted, sum)
	}
}

// reconcile lifts the bans of origin crowdsec that no applied decision
// holds.
func (s *Service) reconcile(ctx context.Context, sum *summary) {
	for _, b := range s.opts.Bans.List() {
		if b.Origin != bans.OriginCrowdSec {
			continue
		}
		s.tmu.Lock()
		t, ok := s.tracked[b.Prefix]
		s.tmu.Unlock()
		if !ok || t.Result != Applied {
			s.lift(ctx, b.Prefix, "no active decision holds it", sum)
		}
	}
}

// protected is the guard's list and the LAPI's addresses.
func (s *Service) protected() []netip.Prefix {
	s.lapiMu.Lock()
	defer s.lapiMu.Unlock()
	return append(s.opts.Protected(), s.lapiNets...)
}

// resolveLAPI learns, until it first works, the LAPI's addresses and the
// local address the guard reaches each from: a pulled decision never cuts
// the guard off its LAPI.
func (s *Service) resolveLAPI(ctx context.Context) {
	s.lapiMu.Lock()
	done := s.resolved
	s.lapiMu.Unlock()
	if done {
		return
	}
	host, port := s.base.Hostname(), s.base.Port()
	if port == "" {
		port = "80"
		if s.base.Scheme == "https" {
			port = "443"
		}
	}
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	nets, err := hostaddr.Protect(lctx, host, port, s.lookup)
	cancel()
	if err != nil {
		s.log.Warn().Str("host", host).Err(err).Msg("the CrowdSec Local API's host does not resolve: its addresses are not protected from a pulled decision until it does")
		return
	}
	s.lapiMu.Lock()
	s.lapiNets, s.resolved = nets, true
	s.lapiMu.Unlock()
}

// Decisions returns the decisions the guard holds from the stream, one
// per target, by target.
func (s *Service) Decisions() []Tracked {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	out := make([]Tracked, 0, len(s.tracked))
	for _, t := range s.tracked {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b Tracked) int { return a.Prefix.Compare(b.Prefix) })
	return out
}

// ---- state of the link ----

// LinkStatus is the state of one part's link to the LAPI.
type LinkStatus struct {
	// State is "connecting" (no request answered yet), "up" or "down".
	State string
	// Problem and Detail say why it is down.
	Problem Problem
	Detail  string
	// Since is when State or Problem last changed.
	Since time.Time
	// Failures counts the failed rounds of requests since the last
	// success.
	Failures uint64
	// LastSuccess is when a request last worked (zero: never).
	LastSuccess time.Time
}

// link is the state of one part (push or pull) and its figures.
type link struct {
	name string
	log  zerolog.Logger

	mu               sync.Mutex
	st               LinkStatus
	requests, failed uint64
	outages          uint64
}

// count counts one request and whether it failed.
func (l *link) count(err error) {
	l.mu.Lock()
	l.requests++
	if err != nil {
		l.failed++
	}
	l.mu.Unlock()
}

func newLink(name string, log zerolog.Logger) *link {
	return &link{name: name, log: log, st: LinkStatus{State: "connecting", Since: time.Now()}}
}

// success records a request that worked; the end of an outage is logged
// (before the new state shows).
func (l *link) success() {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := l.st
	l.st = LinkStatus{State: "up", Since: prev.Since, LastSuccess: now}
	if prev.State != "up" {
		l.st.Since = now
	}
	switch prev.State {
	case "down":
		l.log.Info().Str("api", l.name).Dur("down_for", now.Sub(prev.Since)).Uint64("failures", prev.Failures).
			Msg("CrowdSec Local API works again")
	case "connecting":
		l.log.Info().Str("api", l.name).Msg("CrowdSec Local API reached")
	}
}

// failure records a failed request; the start of an outage, and a change
// of its problem, are logged at warn (before the new state shows).
func (l *link) failure(err error) {
	now := time.Now()
	p := problemOf(err)
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := l.st
	l.st.Failures++
	l.st.Problem, l.st.Detail = p, err.Error()
	if prev.State != "down" {
		l.outages++
		l.st.State, l.st.Since = "down", now
	} else if prev.Problem != p {
		l.st.Since = now
	}
	failures := l.st.Failures
	switch {
	case prev.State != "down":
		l.log.Warn().Str("api", l.name).Str("problem", string(p)).Err(err).
			Msg("CrowdSec Local API failing: retrying with backoff; the guard goes on without it")
	case prev.Problem != p:
		l.log.Warn().Str("api", l.name).Str("problem", string(p)).Err(err).Uint64("failures", failures).
			Msg("CrowdSec Local API still failing, now otherwise")
	default:
		l.log.Debug().Str("api", l.name).Err(err).Uint64("failures", failures).Msg("CrowdSec Local API still failing")
	}
}

func (l *link) status() LinkStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st
}

// Status returns the state of each part that is on, by name ("push",
// "pull").
func (s *Service) Status() map[string]LinkStatus {
	out := make(map[string]LinkStatus, 2)
	for _, l := range []*link{s.push, s.pull} {
		if l != nil {
			out[l.name] = l.status()
		}
	}
	return out
}

// Stats are the Service's figures since its start.
type Stats struct {
	// AlertsSent, AlertsRejected (refused by the LAPI), AlertsDropped
	// (queue full) and AlertsExpired (the ban was over before it could
	// be sent) count the pushed bans.
	AlertsSent, AlertsRejected, AlertsDropped, AlertsExpired uint64
	// AlertsQueued is how many bans wait to be pushed.
	AlertsQueued int
	// Decisions counts the pulled decisions by Result.
	Decisions map[Result]uint64
	// Refused counts the refusals by Reason (a refused answer counts
	// once, as oversized or malformed).
	Refused map[Reason]uint64
	// Pulls counts the successful pulls, each once carried out.
	Pulls uint64
	// Requests, Failed and Outages are by part ("push", "pull").
	Requests, Failed, Outages map[string]uint64
}

// Stats returns the figures.
func (s *Service) Stats() Stats {
	st := Stats{
		AlertsSent:     s.stats.alertsSent.Load(),
		AlertsRejected: s.stats.alertsRejected.Load(),
		AlertsDropped:  s.stats.alertsDropped.Load(),
		AlertsExpired:  s.stats.alertsExpired.Load(),
		Decisions:      make(map[Result]uint64, numResults),
		Refused:        make(map[Reason]uint64, numRefusals),
		Pulls:          s.stats.pullsOK.Load(),
		Requests:       map[string]uint64{},
		Failed:         map[string]uint64{},
		Outages:        map[string]uint64{},
	}
	s.qmu.Lock()
	st.AlertsQueued = len(s.queue)
	s.qmu.Unlock()
	for r := Result(0); r < numResults; r++ {
		st.Decisions[r] = s.stats.decisions[r].Load()
	}
	for i, r := range refusals {
		st.Refused[r] = s.stats.refused[i].Load()
	}
	for _, l := range []*link{s.push, s.pull} {
		if l == nil {
			continue
		}
		l.mu.Lock()
		st.Requests[l.name], st.Failed[l.name], st.Outages[l.name] = l.requests, l.failed, l.outages
		l.mu.Unlock()
	}
	return st
}
