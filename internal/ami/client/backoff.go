package client

import (
	"math/rand/v2"
	"time"
)

// backoff is the pause before each reconnect attempt: base, doubled after
// every failed attempt up to max, each pause drawn within ±20% of its step
// (and never above max), so that a restarted Asterisk is not hit by every
// client at once.
type backoff struct {
	base, max time.Duration
	step      time.Duration // the current step before jitter; 0: base
	rand      func() float64
}

// next returns the pause before the next attempt and doubles the step.
func (b *backoff) next() time.Duration {
	if b.step == 0 {
		b.step = b.base
	}
	r := b.rand
	if r == nil {
		r = rand.Float64
	}
	d := min(time.Duration(float64(b.step)*(0.8+0.4*r())), b.max)
	b.step = min(b.step*2, b.max)
	return d
}

// reset starts again from base.
func (b *backoff) reset() { b.step = 0 }
