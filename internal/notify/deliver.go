package notify

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/metrics"
	"github.com/astguard/astguard/internal/notify/message"
)

// outlet is one sender with its queue, its retry settings and its counts.
type outlet struct {
	sender   Sender
	queue    chan *message.Message
	min      detector.Severity
	attempts int
	backoff  time.Duration
	timeout  time.Duration

	sent, failed, dropped atomic.Uint64
	mu                    sync.Mutex
	lastErr               string
	lastErrTime           time.Time
	failing               string // the error last logged, until a delivery works
}

// wants reports whether the sender takes messages of severity s.
func (o *outlet) wants(s string) bool { return severityOf(s) >= o.min }

// enqueue queues m for the sender, never waiting: a full queue drops m,
// counts it and says so at 1, 10, 100 ... drops.
func (o *outlet) enqueue(m *message.Message, log *zerolog.Logger) {
	select {
	case o.queue <- m:
	default:
		if n := o.dropped.Add(1); dropLog(n) {
			log.Error().Str("sender", o.sender.Name()).Uint64("dropped", n).Str("title", m.Title).
				Msg("notification dropped: the sender's queue is full (its receiver is slow or down)")
		}
	}
}

// run delivers the queued messages one after the other until ctx ends.
func (o *outlet) run(ctx context.Context, log *zerolog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-o.queue:
			_ = o.deliver(ctx, m, log)
		}
	}
}

// deliver makes up to o.attempts attempts of m, each within o.timeout,
// pausing o.backoff (doubled each time) between them, unless the error is
// permanent or ctx ends. It counts the result and, with a logger, logs a
// failure once per change of its error and the recovery.
func (o *outlet) deliver(ctx context.Context, m *message.Message, log *zerolog.Logger) error {
	var err error
	pause := o.backoff
	for attempt := 1; attempt <= o.attempts; attempt++ {
		actx, cancel := context.WithTimeout(ctx, o.timeout)
		err = o.sender.Send(actx, m)
		cancel()
		if err == nil || isPermanent(err) || ctx.Err() != nil || attempt == o.attempts {
			break
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return o.result(ctx.Err(), m, log)
		case <-t.C:
		}
		pause *= 2
	}
	return o.result(err, m, log)
}

// result counts what came of a delivery and logs a change.
func (o *outlet) result(err error, m *message.Message, log *zerolog.Logger) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err == nil {
		o.sent.Add(1)
		if o.failing != "" && log != nil {
			log.Info().Str("sender", o.sender.Name()).Msg("notifications delivered again")
		}
		o.failing = ""
		return nil
	}
	o.failed.Add(1)
	o.lastErr, o.lastErrTime = err.Error(), time.Now()
	if log != nil && err.Error() != o.failing {
		log.Error().Str("sender", o.sender.Name()).Err(err).Int("attempts", o.attempts).Str("title", m.Title).
			Msg("notification not delivered: every attempt failed")
	}
	o.failing = err.Error()
	return err
}

func (o *outlet) stats() metrics.SenderStats {
	o.mu.Lock()
	defer o.mu.Unlock()
	return metrics.SenderStats{Name: o.sender.Name(), Sent: o.sent.Load(), Failed: o.failed.Load(), Dropped: o.dropped.Load(),
		LastError: o.lastErr, LastErrorTime: o.lastErrTime}
}
