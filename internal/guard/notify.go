package guard

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/notify"
	"github.com/astguard/astguard/internal/policy"
)

// newNotifier builds the notifier of cfg's [notify] table, or returns nil
// when no sender is configured. Its probes watch both AMI sessions and fw.
func (g *Guard) newNotifier(cfg *config.Config, fw *watchedFirewall) (*notify.Notifier, error) {
	if !cfg.Notify.Enabled() {
		return nil, nil
	}
	session := func(name string, get func() *client.Client) notify.Probe {
		return notify.Probe{What: "ami", Name: name, Check: func() notify.Condition {
			c := get()
			if c == nil {
				return notify.Condition{}
			}
			st := c.Status()
			if st.Up() || st.State == client.StateClosed {
				return notify.Condition{}
			}
			return notify.Condition{Down: true, Since: st.Since, Problem: st.Problem.String(), Detail: st.Detail}
		}}
	}
	return notify.New(notify.Options{
		Config:      cfg.Notify,
		SecretsFile: func() string { return g.cfg.Load().Response.SecretsFile },
		Mode:        func() policy.Mode { return policy.ModeOf(g.cfg.Load().Mode) },
		Probes: []notify.Probe{
			session("events", func() *client.Client { return g.events }),
			session("urgent", func() *client.Client { return g.urgent }),
			{What: "firewall", Name: "firewall", Check: fw.condition},
		},
		Logger: g.log,
	})
}

// watchedFirewall is the guard's firewall, watched: it remembers whether
// its last operation failed, and since when, for the notifier (a firewall
// that cannot be set up or refuses rules leaves bans recorded but not
// applied). A conntrack failure alone counts as working: the address is
// dropped.
type watchedFirewall struct {
	firewall.Firewall

	mu      sync.Mutex
	failing bool
	since   time.Time
	err     string
}

var _ firewall.Firewall = (*watchedFirewall)(nil)

func (w *watchedFirewall) note(err error) error {
	if errors.Is(err, context.Canceled) {
		return err // the guard is stopping: says nothing of the firewall
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil || errors.Is(err, firewall.ErrConntrack) {
		w.failing, w.err = false, ""
		return err
	}
	if !w.failing {
		w.failing, w.since = true, time.Now()
	}
	w.err = err.Error()
	return err
}

// condition is the notifier's probe of the firewall.
func (w *watchedFirewall) condition() notify.Condition {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.failing {
		return notify.Condition{}
	}
	return notify.Condition{Down: true, Since: w.since, Detail: w.err}
}

func (w *watchedFirewall) Setup(ctx context.Context) error { return w.note(w.Firewall.Setup(ctx)) }

func (w *watchedFirewall) Block(ctx context.Context, entries ...firewall.Entry) error {
	return w.note(w.Firewall.Block(ctx, entries...))
}

func (w *watchedFirewall) Unblock(ctx context.Context, prefixes ...netip.Prefix) error {
	return w.note(w.Firewall.Unblock(ctx, prefixes...))
}

func (w *watchedFirewall) Blocked(ctx context.Context) ([]firewall.Entry, error) {
	entries, err := w.Firewall.Blocked(ctx)
	return entries, w.note(err)
}

func (w *watchedFirewall) Rules(ctx context.Context) ([]netip.Prefix, error) {
	prefixes, err := w.Firewall.Rules(ctx)
	return prefixes, w.note(err)
}
