package metrics

import (
	"fmt"
	"time"

	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
)

// Health is the answer of /healthz.
type Health struct {
	// Status is "ok", or "unhealthy" when the guard is blind or cannot act:
	// an essential AMI session is down, a session's actions time out, no
	// event arrived for silence_alarm, or events were dropped within the
	// last silence_alarm.
	Status string `json:"status"`
	// Reasons say why it is unhealthy, one sentence each.
	Reasons []string `json:"reasons,omitempty"`
	// AMI is whether each session is logged in.
	AMI map[string]bool `json:"ami"`
	// Links is the state of each session's link to Asterisk.
	Links map[string]Link `json:"links"`
	// LastEvent is when the last event arrived (absent: none since the
	// start), SinceEvent how long ago, in seconds (since the start if none).
	LastEvent  *time.Time `json:"last_event,omitempty"`
	SinceEvent float64    `json:"seconds_since_event"`
	// Dropped counts the events dropped since the start; LastDrop is when
	// the last was.
	Dropped  uint64     `json:"events_dropped"`
	LastDrop *time.Time `json:"last_drop,omitempty"`
	// SilenceAlarm is metrics.silence_alarm, written as in the
	// configuration ("5m").
	SilenceAlarm string `json:"silence_alarm"`
	// Notifications are the notifier's counts (absent: no sender is
	// configured). They never make the guard unhealthy.
	Notifications *NotifyHealth `json:"notifications,omitempty"`
	// CrowdSec is the state of each part ("push", "pull") of the link to
	// CrowdSec, when it is on. Its failing never makes the guard
	// unhealthy: the guard protects the PBX without it.
	CrowdSec map[string]Upstream `json:"crowdsec,omitempty"`
}

// Upstream is the state of a link to a service the guard does without
// when it fails (CrowdSec), as /healthz shows it.
type Upstream struct {
	// State is "connecting" (nothing answered yet), "up" or "down".
	State string `json:"state"`
	// Problem and Detail say why it is down: "unreachable",
	// "unauthorized", "rejected", "server_error", "oversized" or
	// "malformed", and the cause.
	Problem string `json:"problem,omitempty"`
	Detail  string `json:"detail,omitempty"`
	// Since is when State or Problem last changed.
	Since time.Time `json:"since"`
	// Failures counts the failed attempts since it last worked.
	Failures uint64 `json:"failures"`
	// LastSuccess is when it last worked (absent: never).
	LastSuccess *time.Time `json:"last_success,omitempty"`
}

// Link is the state of an AMI session's link, as /healthz shows it.
type Link struct {
	// State is "connecting", "up", "down" or "closed".
	State string `json:"state"`
	// Problem and Detail say why it is down: "unreachable", "tls",
	// "no_banner", "login_refused", "handshake" or "lost", and the cause.
	Problem string `json:"problem,omitempty"`
	Detail  string `json:"detail,omitempty"`
	// Since is when State or Problem last changed.
	Since time.Time `json:"since"`
	// ActionsTimingOut: actions get no reply in time (ami.action_timeout).
	ActionsTimingOut bool `json:"actions_timing_out"`
	// EventsSilent: no event for silence_alarm (event session only).
	EventsSilent bool   `json:"events_silent"`
	Banner       string `json:"banner,omitempty"`
}

func link(s client.Status) Link {
	return Link{State: s.State.String(), Problem: s.Problem.String(), Detail: s.Detail, Since: s.Since.UTC(),
		ActionsTimingOut: s.ActionsTimingOut, EventsSilent: s.EventsSilent, Banner: s.Banner}
}

// OK reports whether the guard is healthy.
func (h *Health) OK() bool { return h.Status == "ok" }

// Health says whether the guard sees what happens on the PBX.
func (m *Metrics) Health() Health {
	now := m.now()
	silence := time.Duration(m.silence.Load())
	h := Health{Status: "ok", AMI: make(map[string]bool, len(m.opts.Sessions)),
		Links: make(map[string]Link, len(m.opts.Sessions)), SilenceAlarm: dur(silence)}

	for _, s := range m.opts.Sessions {
		st := s.status()
		h.AMI[s.Name] = st.Up()
		h.Links[s.Name] = link(st)
		switch {
		case s.Essential && !st.Up() && st.Problem != client.ProblemNone:
			h.Reasons = append(h.Reasons, fmt.Sprintf("the AMI session %s is not logged in (%s: %s)", s.Name, st.Problem, st.Detail))
		case s.Essential && !st.Up():
			h.Reasons = append(h.Reasons, fmt.Sprintf("the AMI session %s is not logged in", s.Name))
		case st.Up() && st.ActionsTimingOut:
			// Either session: without replies no call is hung up and no
			// secret changed.
			h.Reasons = append(h.Reasons, fmt.Sprintf("the AMI session %s gets no reply to its actions (ami.action_timeout)", s.Name))
		}
	}

	if last := m.lastEvent(); !last.IsZero() {
		last = last.UTC()
		h.LastEvent = &last
		since := now.Sub(last)
		h.SinceEvent = seconds(max(since, 0))
		if since >= silence {
			h.Reasons = append(h.Reasons, fmt.Sprintf("no event for %s (silence_alarm %s)", dur(since.Round(time.Second)), dur(silence)))
		}
	} else {
		since := now.Sub(m.start)
		h.SinceEvent = seconds(max(since, 0))
		if since >= silence {
			h.Reasons = append(h.Reasons, fmt.Sprintf("no event since the guard started %s ago (silence_alarm %s)", dur(since.Round(time.Second)), dur(silence)))
		}
	}

	h.Dropped = m.dropped.Load()
	if ns := m.lastDrop.Load(); ns != 0 {
		last := time.Unix(0, ns).UTC()
		h.LastDrop = &last
		if now.Sub(last) < silence {
			h.Reasons = append(h.Reasons, fmt.Sprintf("events dropped within the last %s: the queue to the detector was full (%d dropped since the start)", dur(silence), h.Dropped))
		}
	}

	if m.opts.Notify != nil {
		h.Notifications = notifyHealth(m.opts.Notify())
	}
	if m.opts.CrowdSec != nil {
		h.CrowdSec = m.opts.CrowdSec()
	}

	if len(h.Reasons) > 0 {
		h.Status = "unhealthy"
	}
	return h
}

// dur writes a duration as the configuration does: "5m", "1h30m".
func dur(d time.Duration) string { return config.Duration(d).String() }
