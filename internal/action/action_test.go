package action

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
)

// tempErr says of itself whether it is temporary, as firewall.Error does.
type tempErr bool

func (e tempErr) Error() string   { return fmt.Sprintf("temporary %v", bool(e)) }
func (e tempErr) Temporary() bool { return bool(e) }

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		// Messages a real Asterisk 20 answered (asterisk-20/actions-dialog.txt).
		{"No such channel", &ami.ActionError{Action: "Hangup", Message: "No such channel"}, false},
		{"Given category does not exist", &ami.ActionError{Action: "UpdateConfig", Message: "Given category does not exist"}, false},
		{"unknown action", &ami.ActionError{Action: "NoSuchAction", Message: "Invalid/unknown command: NoSuchAction. Use Action: ListCommands to show available commands."}, false},
		{"Permission denied", &ami.ActionError{Action: "UpdateConfig", Message: "Permission denied"}, false},
		{"Config file not found", &ami.ActionError{Action: "GetConfig", Message: "Config file not found"}, false},
		{"another AMI error", &ami.ActionError{Action: "UpdateConfig", Message: "Save of config failed"}, true},
		{"wrapped AMI error", fmt.Errorf("rotating: %w", &ami.ActionError{Action: "Hangup", Message: "No such channel"}), false},
		{"unsafe header", fmt.Errorf("%w: Hangup header %q", ami.ErrUnsafe, "Channel"), false},
		{"session closed", client.ErrClosed, false},
		{"not connected", client.ErrNotConnected, true},
		{"no reply in time", fmt.Errorf("%w: Hangup", client.ErrTimeout), true},
		{"an attempt's deadline", fmt.Errorf("ami: Hangup list incomplete: %w", context.DeadlineExceeded), true},
		{"cancelled", context.Canceled, false},
		{"protected address", fmt.Errorf("bans: %w: 127.0.0.1 is in 127.0.0.0/8", bans.ErrProtected), false},
		{"observe mode", fmt.Errorf("bans: 192.0.2.1: %w", bans.ErrObserving), false},
		{"ban manager closed", bans.ErrClosed, false},
		{"permanent mark", fmt.Errorf("refused: %w", ErrPermanent), false},
		{"temporary firewall error", tempErr(true), true},
		{"permanent firewall error", tempErr(false), false},
		{"joined, temporary", errors.Join(errors.New("state not saved"), tempErr(true)), true},
		{"plain error", errors.New("disk full"), true},
	} {
		if got := Retryable(tc.err); got != tc.want {
			t.Errorf("Retryable(%s: %v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := Backoff{Attempts: 4, First: 100 * time.Millisecond}
		calls := 0
		errs := []error{client.ErrNotConnected, client.ErrNotConnected, nil}
		start := time.Now()
		err := Retry(t.Context(), b, func() error { calls++; return errs[calls-1] })
		if err != nil || calls != 3 {
			t.Fatalf("Retry = %v after %d calls, want success at the third", err, calls)
		}
		// In the bubble time is the fake clock: the pauses were 100ms, 200ms.
		if d := time.Since(start); d != 300*time.Millisecond {
			t.Errorf("paused %v in all, want 100ms then 200ms", d)
		}

		// A permanent error is not retried.
		calls = 0
		perm := &ami.ActionError{Action: "Hangup", Message: "No such channel"}
		if err := Retry(t.Context(), b, func() error { calls++; return perm }); err != perm || calls != 1 {
			t.Errorf("Retry = %v after %d calls, want the permanent error after one", err, calls)
		}

		// Attempts run out: the last error.
		calls = 0
		if err := Retry(t.Context(), b, func() error { calls++; return client.ErrNotConnected }); err != client.ErrNotConnected || calls != 4 {
			t.Errorf("Retry = %v after %d calls, want ErrNotConnected after 4", err, calls)
		}

		// Zero attempts still tries once.
		calls = 0
		if err := Retry(t.Context(), Backoff{}, func() error { calls++; return client.ErrNotConnected }); err == nil || calls != 1 {
			t.Errorf("Retry with no attempts: %v after %d calls, want one try", err, calls)
		}

		// The context's end stops the retries.
		ctx, cancel := context.WithCancel(t.Context())
		calls = 0
		err = Retry(ctx, Backoff{Attempts: 100, First: time.Second}, func() error {
			calls++
			if calls == 2 {
				cancel()
			}
			return client.ErrNotConnected
		})
		if err != client.ErrNotConnected || calls != 2 {
			t.Errorf("Retry = %v after %d calls, want to stop when the context ends", err, calls)
		}
	})
}

func TestIsNoSuchChannel(t *testing.T) {
	if !IsNoSuchChannel(fmt.Errorf("x: %w", &ami.ActionError{Action: "Hangup", Message: "No such channel"})) {
		t.Error("the recorded No such channel is not recognised")
	}
	if IsNoSuchChannel(&ami.ActionError{Action: "Hangup", Message: "Permission denied"}) || IsNoSuchChannel(client.ErrClosed) || IsNoSuchChannel(nil) {
		t.Error("another error taken for No such channel")
	}
}

func TestWithTimeout(t *testing.T) {
	ctx, cancel := WithTimeout(t.Context(), 0)
	defer cancel()
	if _, ok := ctx.Deadline(); ok || ctx.Err() != nil {
		t.Error("a timeout of 0 set a deadline")
	}
	ctx, cancel = WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, ok := ctx.Deadline(); !ok {
		t.Error("a timeout of 1m set no deadline")
	}
}
