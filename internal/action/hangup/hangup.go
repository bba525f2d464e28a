// Package hangup hangs up calls over AMI: every channel of an extension
// whose secret is being used for fraud, or one new channel of an extension
// the guard is stopping.
//
// Use: one Hanger for the guard's life, on the AMI session reserved for
// hang-ups (so that they never wait behind a slow action):
//
//	h := hangup.New(urgentSession)
//	res := h.Extension(ctx, ami.Extension{Tech: ami.TechSIP, Name: "200"}, live, settings)
//	out := h.Channel(ctx, "SIP/200-0000012c", settings)
//
// and tell it of every Hangup event the guard receives, from its event loop
// (h.Gone(ev.Channel)): that is how Extension confirms its hang-ups.
package hangup

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/ami"
)

// Doer sends AMI actions: Do returns an action's reply, List a list
// action's reply and items. *ami.Session fits, as does any AMI client with
// these two methods. An answer of Response: Error must come back as an
// *ami.ActionError.
type Doer interface {
	Do(ctx context.Context, a ami.Action) (ami.Response, error)
	List(ctx context.Context, a ami.Action) (ami.Response, []ami.Response, error)
}

// DefaultConfirm is how long Extension waits for the Hangup events of the
// channels it hung up when Settings.Confirm is 0.
const DefaultConfirm = 2 * time.Second

// Settings are the configuration a hang-up runs with, taken per call so
// that a reload applies to the next one.
type Settings struct {
	// Cause is the Q.850 cause sent with Hangup (response.hangup_cause).
	Cause int
	// Regex says whether the Asterisk has Hangup by /regex/ (11 and
	// later; see RegexSupported). Without it, Extension hangs up the
	// tracked channels by name only.
	Regex bool
	// Timeout is how long one Hangup may wait for its reply
	// (ami.action_timeout); a hang-up by regex gets twice as long for its
	// list. 0: no limit but the context's.
	Timeout time.Duration
	// Retry is how a failed Hangup is retried.
	Retry action.Backoff
	// Confirm is how long Extension waits for the Hangup events of the
	// channels it hung up; 0 is DefaultConfirm.
	Confirm time.Duration
}

// Hanger hangs up channels through a Doer. Safe for concurrent use.
type Hanger struct {
	doer Doer
	now  func() time.Time

	mu       sync.Mutex
	awaiting map[string]*waiter // channel -> the Extension call waiting for its Hangup event
}

// waiter counts the Hangup events one Extension call still waits for.
type waiter struct {
	left      int
	confirmed int
	all       chan struct{} // closed when left reaches 0
}

// New returns a Hanger that sends its actions through d.
func New(d Doer) *Hanger {
	return &Hanger{doer: d, now: time.Now, awaiting: make(map[string]*waiter)}
}

// Result is the outcome of Extension with its counts. Its Took is the time
// until the hang-ups were answered, the wait for their confirmation left
// out.
type Result struct {
	action.Outcome
	// ByRegex is how many channels the hang-up by /regex/ hung up (all
	// of the extension's, tracked or not).
	ByRegex int
	// ByName is how many tracked channels the regex missed (or, without
	// regex, all of them) were hung up by name.
	ByName int
	// AlreadyGone is how many tracked channels Asterisk no longer had
	// ("No such channel").
	AlreadyGone int
	// Tracked is how many live channels of the extension the guard
	// tracked; Confirmed, how many of those hung up were confirmed by
	// their Hangup event within Settings.Confirm.
	Tracked, Confirmed int
	// NoRegex is set when the hang-up by regex was not sent (Settings.Regex
	// false, or a name no regex is built for) or Asterisk did not
	// understand it (Asterisk 1.8 answers "No such channel").
	NoRegex bool
}

// HungUp is how many channels were hung up.
func (r Result) HungUp() int { return r.ByRegex + r.ByName }

// Extension hangs up every channel of ext: first by a /regex/ on its
// channel names (atomic, and it catches channels the guard did not track),
// then by name each channel of live (the extension's channels the guard
// tracks) the regex did not hang up. It then waits up to Settings.Confirm
// for the Hangup events of the tracked channels it hung up (reported
// through Gone).
//
// The outcome is Done when every hang-up it sent succeeded or found its
// channel gone, or when at least one channel was hung up (Err then holds
// the first error); Failed when an error stopped it and nothing was hung
// up.
func (h *Hanger) Extension(ctx context.Context, ext ami.Extension, live []string, s Settings) Result {
	start := h.now()
	res := Result{Outcome: action.Outcome{Action: action.Hangup, Target: ext.String()}}
	w := &waiter{all: make(chan struct{})}
	tracked := make([]string, 0, len(live))
	h.mu.Lock()
	for _, ch := range live {
		if slices.Contains(tracked, ch) {
			continue
		}
		tracked = append(tracked, ch)
		h.awaiting[ch] = w
		w.left++
	}
	if w.left == 0 {
		close(w.all)
	}
	h.mu.Unlock()
	res.Tracked = len(tracked)
	defer h.forget(tracked, w)

	cause := strconv.Itoa(s.Cause)
	hung := make(map[string]bool, len(tracked))
	var firstErr error
	re, ok := ChannelRegex(ext.Tech, ext.Name)
	res.NoRegex = !ok || !s.Regex
	if !res.NoRegex {
		err := action.Retry(ctx, s.Retry, func() error {
			actx, cancel := action.WithTimeout(ctx, 2*s.Timeout)
			defer cancel()
			_, items, err := h.doer.List(actx, ami.Action{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: re}, {Key: "Cause", Value: cause}}})
			for _, it := range items {
				if ch := it.Get("Channel"); ch != "" && !hung[ch] {
					hung[ch] = true
					res.ByRegex++
				}
			}
			return err
		})
		switch {
		case action.IsNoSuchChannel(err):
			// The regex was taken for a channel name: an Asterisk without
			// Hangup by regex. The names below cover the tracked ones.
			res.NoRegex = true
		case err != nil:
			firstErr = err
		}
	}
	for _, ch := range tracked {
		if hung[ch] {
			continue
		}
		if !ami.ValidChannel(ch) {
			h.unwait(ch, w)
			continue
		}
		err := action.Retry(ctx, s.Retry, func() error {
			actx, cancel := action.WithTimeout(ctx, s.Timeout)
			defer cancel()
			_, err := h.doer.Do(actx, ami.Action{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: ch}, {Key: "Cause", Value: cause}}})
			return err
		})
		switch {
		case err == nil:
			hung[ch] = true
			res.ByName++
		case action.IsNoSuchChannel(err):
			res.AlreadyGone++
			h.unwait(ch, w)
		default:
			h.unwait(ch, w)
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	res.Took = h.now().Sub(start)

	// Confirmation: the Hangup events of the tracked channels hung up.
	wait := s.Confirm
	if wait <= 0 {
		wait = DefaultConfirm
	}
	t := time.NewTimer(wait)
	select {
	case <-w.all:
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	h.mu.Lock()
	res.Confirmed = w.confirmed
	h.mu.Unlock()

	res.Err = firstErr
	res.Result = action.Done
	if firstErr != nil && res.HungUp() == 0 {
		res.Result = action.Failed
		res.Retryable = action.Retryable(firstErr)
	}
	res.Detail = fmt.Sprintf("%d channels hung up (%d by regex, %d by name), %d of %d tracked confirmed by their Hangup events",
		res.HungUp(), res.ByRegex, res.ByName, res.Confirmed, res.Tracked)
	if res.AlreadyGone > 0 {
		res.Detail += fmt.Sprintf(", %d already gone", res.AlreadyGone)
	}
	if res.NoRegex && ok {
		res.Detail += "; no hang-up by regex on this Asterisk: only the tracked channels were hung up"
	}
	return res
}

// unwait stops waiting for ch's Hangup event: it was not hung up.
func (h *Hanger) unwait(ch string, w *waiter) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.awaiting[ch] == w {
		delete(h.awaiting, ch)
		w.left--
		if w.left == 0 {
			close(w.all)
		}
	}
}

// forget drops what w still waits for.
func (h *Hanger) forget(channels []string, w *waiter) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ch := range channels {
		if h.awaiting[ch] == w {
			delete(h.awaiting, ch)
		}
	}
}

// Gone is told of every Hangup event: the channel is gone. It never
// blocks.
func (h *Hanger) Gone(channel string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w, ok := h.awaiting[channel]
	if !ok {
		return
	}
	delete(h.awaiting, channel)
	w.confirmed++
	w.left--
	if w.left == 0 {
		close(w.all)
	}
}

// Channel hangs up one channel by name, e.g. a new call of an extension
// the guard is stopping. A channel already gone counts as Done.
func (h *Hanger) Channel(ctx context.Context, channel string, s Settings) action.Outcome {
	start := h.now()
	out := action.Outcome{Action: action.Hangup, Target: channel}
	if !ami.ValidChannel(channel) {
		out.Result, out.Err = action.Failed, fmt.Errorf("%q is not a channel name the guard sends: %w", channel, action.ErrPermanent)
		return out
	}
	err := action.Retry(ctx, s.Retry, func() error {
		actx, cancel := action.WithTimeout(ctx, s.Timeout)
		defer cancel()
		_, err := h.doer.Do(actx, ami.Action{Name: "Hangup", Headers: []ami.Header{{Key: "Channel", Value: channel}, {Key: "Cause", Value: strconv.Itoa(s.Cause)}}})
		return err
	})
	out.Took = h.now().Sub(start)
	switch {
	case err == nil:
		out.Result, out.Detail = action.Done, "hung up"
	case action.IsNoSuchChannel(err):
		out.Result, out.Detail = action.Done, "already gone"
	default:
		out.Result, out.Err, out.Retryable = action.Failed, err, action.Retryable(err)
	}
	return out
}

// ChannelRegex is the Hangup /regex/ matching every channel of an
// extension: POSIX ERE, as Asterisk compiles it, with the name's
// metacharacters escaped. It refuses a name ami.ValidName refuses, and
// technologies whose channels it does not know how to match (Local).
func ChannelRegex(tech ami.Tech, name string) (string, bool) {
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

// RegexSupported reports whether an Asterisk of this AMI version (from its
// banner, "Asterisk Call Manager/1.3": client.Client.Version) has Hangup by
// /regex/: AMI 1.3 (Asterisk 11) and later. Asterisk 1.8 (AMI 1.1) and 10
// (1.2) take the regex for a channel name. An unknown version (0.0: not
// connected yet, or a banner without one) counts as a recent Asterisk.
func RegexSupported(major, minor int) bool { return major != 1 || minor >= 3 }
