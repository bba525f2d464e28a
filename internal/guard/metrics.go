package guard

import (
	"fmt"
	"time"

	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/metrics"
)

// newMetrics builds the guard's metrics. They read the guard's state when
// scraped; the HTTP endpoint serves only once Run has wired everything.
func (g *Guard) newMetrics(cfg *config.Config) *metrics.Metrics {
	session := func(name string, get func() *client.Client, essential bool) metrics.Session {
		return metrics.Session{
			Name: name,
			Status: func() client.Status {
				if c := get(); c != nil {
					return c.Status()
				}
				return client.Status{}
			},
			ActionTimeouts: func() uint64 {
				if c := get(); c != nil {
					return c.Stats().ActionTimeouts
				}
				return 0
			},
			Essential: essential,
		}
	}
	// Messages the readers of both sessions rejected.
	rejected := func(f func(client.Stats) uint64) func() uint64 {
		return func() uint64 {
			var n uint64
			for _, c := range []*client.Client{g.events, g.urgent} {
				if c != nil {
					n += f(c.Stats())
				}
			}
			return n
		}
	}
	// The notifier is built after the metrics, before they are served.
	var notifyStats func() metrics.NotifyStats
	if cfg.Notify.Enabled() {
		notifyStats = func() metrics.NotifyStats {
			if g.notify == nil {
				return metrics.NotifyStats{}
			}
			return g.notify.Stats()
		}
	}
	return metrics.New(metrics.Options{
		Sessions: []metrics.Session{
			session("events", func() *client.Client { return g.events }, true),
			session("urgent", func() *client.Client { return g.urgent }, false),
		},
		QueueLen: func() int { return len(g.queue) },
		QueueCap: cap(g.queue),
		Bans: func() int {
			if g.bans == nil {
				return 0
			}
			n := 0
			for _, b := range g.bans.List() {
				if !b.DryRun {
					n++
				}
			}
			return n
		},
		Malformed: rejected(func(s client.Stats) uint64 { return s.Malformed }),
		Oversized: rejected(func(s client.Stats) uint64 { return s.Oversized }),
		LastEvent: func() time.Time {
			if ns := g.stats.lastEvent.Load(); ns != 0 {
				return time.Unix(0, ns)
			}
			return time.Time{}
		},
		SilenceAlarm: time.Duration(cfg.Metrics.SilenceAlarm),
		Notify:       notifyStats,
		CrowdSec:     g.crowdSecHealth,
	})
}

// crowdSecHealth is the state of the CrowdSec link for /healthz (nil
// when it is off).
func (g *Guard) crowdSecHealth() map[string]metrics.Upstream {
	if g.cs == nil {
		return nil
	}
	out := make(map[string]metrics.Upstream, 2)
	for name, st := range g.cs.Status() {
		u := metrics.Upstream{State: st.State, Problem: string(st.Problem), Detail: st.Detail, Since: st.Since.UTC(), Failures: st.Failures}
		if !st.LastSuccess.IsZero() {
			t := st.LastSuccess.UTC()
			u.LastSuccess = &t
		}
		out[name] = u
	}
	return out
}

// listenMetrics binds metrics.listen (nil when it is empty).
func (g *Guard) listenMetrics(addr string) (*metrics.Server, error) {
	if addr == "" {
		return nil, nil
	}
	srv, err := metrics.Listen(addr, g.metrics.Handler())
	if err != nil {
		return nil, fmt.Errorf("metrics.listen: %w", err)
	}
	g.metricsAddr = srv.Addr().String()
	g.log.Info().Str("component", "metrics").Str("address", g.metricsAddr).Msg("metrics on /metrics, health on /healthz")
	return srv, nil
}

// MetricsAddr is the address the metrics endpoint listens on (with the real
// port when metrics.listen asked for port 0), or "" when it is off.
func (g *Guard) MetricsAddr() string { return g.metricsAddr }

// Metrics returns the guard's metrics (tests).
func (g *Guard) Metrics() *metrics.Metrics { return g.metrics }
