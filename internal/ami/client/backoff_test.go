package client

import (
	"testing"
	"time"
)

// The pauses double from base up to max; the jitter spans ±20% of a step
// and never goes past max; reset starts again.
func TestBackoff(t *testing.T) {
	const ms = time.Millisecond
	for _, tc := range []struct {
		r    float64
		want []time.Duration
	}{
		{0.5, []time.Duration{1000 * ms, 2000 * ms, 4000 * ms, 8000 * ms, 10000 * ms, 10000 * ms}}, // no jitter
		{0, []time.Duration{800 * ms, 1600 * ms, 3200 * ms, 6400 * ms, 8000 * ms, 8000 * ms}},      // -20%
		{1, []time.Duration{1200 * ms, 2400 * ms, 4800 * ms, 9600 * ms, 10000 * ms, 10000 * ms}},   // +20%, capped
	} {
		b := backoff{base: time.Second, max: 10 * time.Second, rand: func() float64 { return tc.r }}
		for i, w := range tc.want {
			if got := b.next(); got != w {
				t.Errorf("r=%v pause %d: %s, want %s", tc.r, i, got, w)
			}
		}
		b.reset()
		if got := b.next(); got != tc.want[0] {
			t.Errorf("r=%v after reset: %s, want %s", tc.r, got, tc.want[0])
		}
	}
}

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		banner       string
		major, minor int
		ok           bool
	}{
		{"Asterisk Call Manager/1.1", 1, 1, true},
		{"Asterisk Call Manager/1.3", 1, 3, true},
		{"Asterisk Call Manager/2.10.6", 2, 10, true},
		{"Asterisk Call Manager/9.0.0", 9, 0, true},
		{"Asterisk Call Manager/11.0.0", 11, 0, true},
		{"Asterisk Call Manager/unknown", 0, 0, false},
		{"Asterisk Call Manager/9", 0, 0, false},
		{"", 0, 0, false},
	} {
		maj, min, ok := ParseVersion(tc.banner)
		if maj != tc.major || min != tc.minor || ok != tc.ok {
			t.Errorf("ParseVersion(%q) = %d, %d, %v", tc.banner, maj, min, ok)
		}
	}
}
