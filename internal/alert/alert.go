// Package alert turns detector alerts into the guard's output: one JSON
// object per line for `guard replay`, and the same fields as a zerolog line
// (warn for warnings, error for criticals) in the live guard.
package alert

import (
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/detector"
)

// Record is the wire form of an alert. Field names are part of the guard's
// interface: log routers and the README depend on them. Sources are the
// addresses Asterisk received the extension's requests from; Contacts are
// addresses the client supplied (Contact header, PeerStatus Address,
// ContactStatus URI), never acted on.
type Record struct {
	Time      string   `json:"time"` // event time of the tripping message, RFC 3339
	File      string   `json:"file,omitempty"`
	Seq       int      `json:"seq"`
	Rule      string   `json:"rule"`
	Severity  string   `json:"severity"`
	Tech      string   `json:"tech,omitempty"`
	Extension string   `json:"extension,omitempty"`
	IP        string   `json:"ip,omitempty"`
	Net       string   `json:"net,omitempty"` // the IPv6 network counted, when wider than IP
	Sources   []string `json:"sources"`
	Contacts  []string `json:"contacts,omitempty"`
	Accounts  []string `json:"accounts,omitempty"`
	Count     int      `json:"count"`
	Window    string   `json:"window"`
	Numbers   []string `json:"numbers,omitempty"`
	Reason    string   `json:"reason"`
	Note      string   `json:"note,omitempty"`
}

// FromAlert builds the record of a; file names the transcript in a replay.
func FromAlert(a *detector.Alert, file string) Record {
	r := Record{
		Time:     a.Time.UTC().Format(time.RFC3339Nano),
		File:     file,
		Seq:      a.Seq,
		Rule:     a.Rule.String(),
		Severity: a.Severity.String(),
		Sources:  make([]string, 0, len(a.Sources)),
		Accounts: a.Accounts,
		Count:    a.Count,
		Window:   a.Window.String(),
		Numbers:  a.Numbers,
		Note:     a.Note,
	}
	for _, s := range a.Sources {
		r.Sources = append(r.Sources, s.String())
	}
	for _, c := range a.Contacts {
		r.Contacts = append(r.Contacts, c.String())
	}
	var who string
	if a.IsExtension() {
		r.Tech = a.Tech.String()
		r.Extension = a.Extension
		who = "extension " + r.Tech + "/" + a.Extension
	} else {
		r.IP = a.IP.String()
		who = "address " + r.IP
		if a.Net.IsValid() && !a.Net.IsSingleIP() {
			r.Net = a.Net.String()
			who = "network " + r.Net + " (last address " + r.IP + ")"
		}
	}
	switch {
	case a.Rule == detector.RuleNewSource:
		r.Reason = fmt.Sprintf("%s %s", who, a.Reason)
	case a.Window > 0:
		r.Reason = fmt.Sprintf("%s: %d %s in %s", who, a.Count, a.Reason, a.Window)
	default:
		r.Reason = fmt.Sprintf("%s: %d %s", who, a.Count, a.Reason)
	}
	return r
}

// Log writes the alert as one zerolog line: level warn for a warning, error
// for a critical, the fixed message "fraud alert" and the record's fields.
func Log(l *zerolog.Logger, a *detector.Alert) {
	r := FromAlert(a, "")
	ev := l.Warn()
	if a.Severity == detector.Critical {
		ev = l.Error()
	}
	ev = ev.Str("rule", r.Rule).Str("severity", r.Severity).Str("event_time", r.Time).Int("seq", r.Seq)
	if r.Extension != "" {
		ev = ev.Str("tech", r.Tech).Str("extension", r.Extension)
	}
	if r.IP != "" {
		ev = ev.Str("ip", r.IP)
	}
	if r.Net != "" {
		ev = ev.Str("net", r.Net)
	}
	ev = ev.Strs("sources", r.Sources)
	if len(r.Contacts) > 0 {
		ev = ev.Strs("contacts", r.Contacts)
	}
	ev = ev.Int("count", r.Count).Str("window", r.Window)
	if len(r.Accounts) > 0 {
		ev = ev.Strs("accounts", r.Accounts)
	}
	if len(r.Numbers) > 0 {
		ev = ev.Strs("numbers", r.Numbers)
	}
	if r.Note != "" {
		ev = ev.Str("note", r.Note)
	}
	ev.Str("reason", r.Reason).Msg("fraud alert")
}
