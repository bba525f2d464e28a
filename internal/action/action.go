// Package action holds what the guard's actions share: the typed outcome
// every action returns, the retry with backoff they run their AMI and
// firewall calls under, and the one place that decides whether an error is
// worth a retry.
//
// The actions themselves live in packages of their own, each behind the
// small interface it needs:
//
//   - hangup: hang up every channel of an extension, or one new channel
//     (needs an AMI Doer);
//   - secret: give an extension a new SIP secret (needs a Store, where the
//     secret lives, and a Recorder, the secrets file);
//   - block: choose the address to block for an alert and ban it (needs an
//     AMI Doer for Getvar and a Banner, the ban manager);
//   - bans and firewall: the bans' record and the packet filter under block.
//
// An action never logs its outcome and never decides whether to act: the
// caller (the guard's responder, and the policy behind it) does both.
package action

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
)

// The actions, named as the policy names them.
const (
	Hangup       = config.ActionHangup
	BlockIP      = config.ActionBlockIP
	RotateSecret = config.ActionRotateSecret
)

// Result is how an action ended. Its values are the `result` of the
// guard's outcome lines and of the astguard_actions_total metric.
type Result string

// The results.
const (
	// Done: the action did what it was asked.
	Done Result = "done"
	// Failed: it could not; Outcome.Err says why.
	Failed Result = "failed"
	// Skipped: it was not done on purpose (a protected address, a secret
	// the guard must not rotate, no address to block); Detail says why.
	Skipped Result = "skipped"
	// Would: it was only recorded, not carried out (a dry-run firewall).
	Would Result = "would"
)

// Outcome is the result of one action on one target.
type Outcome struct {
	Action string // Hangup, BlockIP or RotateSecret
	Result Result
	// Target is what was acted on: "SIP/200", a channel, an address.
	Target string
	// Took is the time from the action's start to its outcome, retries
	// included.
	Took time.Duration
	// Err is the error that made it fail, or an error it met and got
	// past (a hang-up by regex refused while every channel was hung up
	// by name); nil otherwise.
	Err error
	// Detail says in words what happened, for the administrator. It never
	// holds a secret.
	Detail string
	// Retryable reports, for a failed action, whether trying it again
	// later may succeed (Retryable(Err)).
	Retryable bool
}

// Backoff is how an action retries: at most Attempts tries (at least one),
// the first pause First, doubled after every failed try.
type Backoff struct {
	Attempts int
	First    time.Duration
}

// Retry runs f until it succeeds, fails with an error Retryable says a retry
// cannot help, has been tried b.Attempts times, or ctx ends; it returns f's
// last error.
func Retry(ctx context.Context, b Backoff, f func() error) error {
	pause := b.First
	var err error
	for attempt := 1; ; attempt++ {
		if err = f(); err == nil || !Retryable(err) || attempt >= b.Attempts || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause *= 2
	}
}

// WithTimeout is context.WithTimeout, except that a timeout of 0 (or less)
// sets no deadline: the zero value of an action's settings is "unbounded",
// not "already expired".
func WithTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// ErrPermanent marks an error no retry can fix. An action's own errors say
// they are permanent by matching it with errors.Is (see secret.Refusal).
var ErrPermanent = errors.New("permanent")

// permanentMessages start the Message of AMI errors that a retry cannot
// fix: what Asterisk answers for a missing channel, category or file, a
// permission the manager.conf user lacks, an action it does not know.
var permanentMessages = []string{
	"No such channel",
	"Given category does not exist",
	"Config file not found",
	"Permission denied",
	"Invalid/unknown command",
}

// Retryable reports whether trying again may help after err. No: anything
// marked ErrPermanent, a value the guard refused to send (ami.ErrUnsafe), a
// closed AMI client or ban manager, a cancelled context, a protected address
// or observe mode (bans), an AMI error with a message of permanentMessages,
// and an error that says of itself it is not temporary (a permanent
// firewall error). Yes: every other AMI error, a timeout (an attempt's
// deadline; Retry stops by itself when its own context ends), and any
// error that does not say.
func Retryable(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, client.ErrTimeout):
		return true
	case errors.Is(err, ErrPermanent), errors.Is(err, ami.ErrUnsafe), errors.Is(err, client.ErrClosed),
		errors.Is(err, context.Canceled),
		errors.Is(err, bans.ErrProtected), errors.Is(err, bans.ErrObserving), errors.Is(err, bans.ErrClosed):
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

// IsNoSuchChannel reports whether err is Asterisk's answer for a channel
// that is not there (any more).
func IsNoSuchChannel(err error) bool {
	var ae *ami.ActionError
	return errors.As(err, &ae) && strings.HasPrefix(ae.Message, "No such channel")
}
