package notify

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/notify/message"
	"github.com/astguard/astguard/internal/policy"
)

// How much of an incident a message lists.
const (
	maxNumbers = 5 // the first numbers dialled
	maxAddrs   = 5 // sources, contacts, accounts
	maxFigures = 6 // alerts, one per rule and severity
)

// updateOf says in a few words what ev changed.
func updateOf(ev *incident.Event) string {
	switch ev.Kind {
	case incident.EventOpened:
		return message.EventOpened
	case incident.EventClosed:
		if ev.CloseReason == incident.ClosedReleased {
			return "released"
		}
		return message.EventClosed
	}
	if ev.Result == policy.Would {
		if ev.Mode != policy.Enforce {
			return "observe: would " + ev.Action.String()
		}
		return "would " + ev.Action.String()
	}
	return ev.Action.String() + " " + ev.Result.String()
}

// eventOf says which event of message.Message updates are: opened, closed
// or updated.
func eventOf(updates []string) string {
	switch {
	case slices.Contains(updates, message.EventOpened):
		return message.EventOpened
	case slices.Contains(updates, message.EventClosed), slices.Contains(updates, "released"):
		return message.EventClosed
	}
	return message.EventUpdated
}

// incidentOf is the message form of rec. Every value an attacker may have
// shaped is cleaned (message.Clean).
func (n *Notifier) incidentOf(rec *incident.Record, updates []string) message.Incident {
	inc := message.Incident{
		ID: rec.ID, State: "open", Updates: slices.Clone(updates), Rule: rec.Rule.String(), Severity: rec.Severity.String(),
		Opened: rec.Opened.UTC(), LastAlert: rec.LastAlert.UTC(), Alerts: rec.AlertCount, Stopped: rec.Stopped,
		Sources: []string{}, Numbers: []string{}, Figures: []message.Figure{}, Actions: []message.Action{},
	}
	if inc.Updates == nil {
		inc.Updates = []string{}
	}
	if !rec.Open() {
		inc.State, inc.Closed = rec.CloseReason, rec.Closed.UTC()
		if inc.State == incident.ClosedQuiet {
			inc.State = message.EventClosed
		}
	}
	if rec.Key.IsExtension() {
		inc.Extension = message.Clean(rec.Key.String())
	} else {
		inc.Address = rec.Key.Addr.String()
	}
	seen := map[string]int{} // figure index by rule and severity
	for _, a := range rec.Alerts {
		k := a.Rule + "/" + a.Severity
		f := message.Figure{Rule: a.Rule, Severity: a.Severity, Count: a.Count, Window: a.Window, Reason: message.Clean(a.Reason)}
		if i, ok := seen[k]; ok {
			if a.Count > inc.Figures[i].Count {
				inc.Figures[i] = f
			}
		} else if len(inc.Figures) < maxFigures {
			seen[k] = len(inc.Figures)
			inc.Figures = append(inc.Figures, f)
		}
		inc.Sources = addClean(inc.Sources, a.Sources, maxAddrs)
		inc.Contacts = addClean(inc.Contacts, a.Contacts, maxAddrs)
		inc.Accounts = addClean(inc.Accounts, a.Accounts, maxAddrs)
		inc.Numbers = addClean(inc.Numbers, a.Numbers, maxNumbers)
	}
	for _, a := range rec.Actions {
		act := message.Action{Action: a.Action.String(), Result: a.Result.String(), Attempts: a.Attempts}
		if len(a.Outcomes) > 0 {
			o := a.Outcomes[len(a.Outcomes)-1]
			act.Target, act.Detail, act.Error = message.Clean(o.Target), message.Clean(o.Detail), message.Clean(o.Error)
		}
		inc.Actions = append(inc.Actions, act)
		if a.Action == policy.RotateSecret && a.Result == policy.Done {
			inc.SecretsFile = message.Clean(n.secretsFile())
		}
	}
	return inc
}

// addClean appends to dst the cleaned values of src it does not hold yet,
// up to max in all.
func addClean(dst, src []string, max int) []string {
	for _, s := range src {
		if len(dst) >= max {
			break
		}
		if s = message.Clean(s); !slices.Contains(dst, s) {
			dst = append(dst, s)
		}
	}
	return dst
}

// incidentMessageOf is the message of updates of rec, in mode.
func (n *Notifier) incidentMessageOf(rec *incident.Record, updates []string, mode policy.Mode, now time.Time) *message.Message {
	inc := n.incidentOf(rec, updates)
	m := &message.Message{
		Kind: message.KindIncident, Event: eventOf(updates), Severity: inc.Severity, Instance: n.instance,
		Mode: modeName(mode), Time: now.UTC(), Incident: &inc,
	}
	for _, a := range inc.Actions {
		if a.Result == policy.Failed.String() {
			m.Severity = detector.Critical.String()
		}
	}
	if len(updates) == 0 {
		m.Event = message.EventOpened // an open incident, as it is (a restart)
	}
	m.Title = incidentTitle(m.Event, &inc, mode)
	m.Text = n.incidentText(m, &inc, mode)
	return m
}

// eventMessage is the message of an incident the book no longer has
// (pruned before the message went out): what the event says.
func (n *Notifier) eventMessage(ev *incident.Event, updates []string, now time.Time) *message.Message {
	rec := incident.Record{ID: ev.ID, Key: ev.Key, Rule: ev.Rule, Severity: ev.Severity, Opened: ev.Time, LastAlert: ev.Time}
	if ev.Kind == incident.EventClosed {
		rec.Closed, rec.CloseReason = ev.Time, ev.CloseReason
	}
	return n.incidentMessageOf(&rec, updates, ev.Mode, now)
}

// who is the incident's key as the messages write it.
func who(inc *message.Incident) string {
	if inc.Extension != "" {
		return inc.Extension
	}
	return inc.Address
}

// incidentTitle is the one line of an incident's message.
func incidentTitle(event string, inc *message.Incident, mode policy.Mode) string {
	verb := event
	if event == message.EventClosed && inc.State == "released" {
		verb = "released"
	}
	t := fmt.Sprintf("incident %s %s: %s, %s %s", inc.ID, verb, who(inc), inc.Rule, inc.Severity)
	var done, would []string
	for _, u := range inc.Updates {
		switch {
		case u == message.EventOpened || u == message.EventClosed || u == "released":
		case strings.HasPrefix(u, "observe: would "):
			would = append(would, strings.TrimPrefix(u, "observe: would "))
		default:
			done = append(done, u)
		}
	}
	if event == message.EventOpened && mode != policy.Enforce && len(would) == 0 {
		for _, a := range inc.Actions {
			if a.Result == policy.Would.String() {
				would = append(would, a.Action)
			}
		}
	}
	if len(would) > 0 {
		done = append(done, "observe: would "+strings.Join(would, ", "))
	}
	if len(done) > 0 {
		t += ": " + strings.Join(done, ", ")
	}
	return t
}

// incidentText is the plain text of an incident's message.
func (n *Notifier) incidentText(m *message.Message, inc *message.Incident, mode policy.Mode) string {
	var b strings.Builder
	line := func(label, format string, args ...any) {
		fmt.Fprintf(&b, "%-12s %s\n", label+":", fmt.Sprintf(format, args...))
	}
	more := func(format string, args ...any) { fmt.Fprintf(&b, "%-12s %s\n", "", fmt.Sprintf(format, args...)) }
	fmt.Fprintf(&b, "%s\n\n", m.Title)
	if mode != policy.Enforce {
		b.WriteString("The guard runs in observe mode on " + n.instance + ": it did nothing (observe: would).\n\n")
	} else {
		b.WriteString("The guard runs in enforce mode on " + n.instance + ".\n\n")
	}
	line("Changed", "%s", strings.Join(inc.Updates, ", "))
	if inc.Extension != "" {
		line("Extension", "%s", inc.Extension)
	} else {
		line("Address", "%s", inc.Address)
	}
	line("Rule", "%s %s opened it at %s; %d alerts, the last at %s", inc.Rule, inc.Severity, stamp(inc.Opened), inc.Alerts, stamp(inc.LastAlert))
	for i, f := range inc.Figures {
		if i == 0 {
			line("Figures", "%s %s: %s", f.Rule, f.Severity, f.Reason)
		} else {
			more("%s %s: %s", f.Rule, f.Severity, f.Reason)
		}
	}
	if len(inc.Sources) > 0 {
		line("Sources", "%s", strings.Join(inc.Sources, ", "))
	}
	if len(inc.Contacts) > 0 {
		line("Contacts", "%s (client-supplied, never blocked)", strings.Join(inc.Contacts, ", "))
	}
	if len(inc.Accounts) > 0 {
		line("Accounts", "%s (tried from the address)", strings.Join(inc.Accounts, ", "))
	}
	if len(inc.Numbers) > 0 {
		line("Dialled", "%s (the first %d at most)", strings.Join(inc.Numbers, ", "), maxNumbers)
	}
	for _, group := range []struct{ label, result string }{
		{"Done", policy.Done.String()}, {"Failed", policy.Failed.String()}, {"Running", policy.Running.String()},
		{"Skipped", policy.Skipped.String()}, {"Would", policy.Would.String()},
	} {
		first := true
		for _, a := range inc.Actions {
			if a.Result != group.result {
				continue
			}
			s := a.Action
			if a.Target != "" {
				s += " " + a.Target
			}
			if a.Result == policy.Would.String() && mode != policy.Enforce {
				s = "observe: would " + s
			}
			if a.Error != "" {
				s += ": " + a.Error
			}
			if a.Detail != "" {
				s += " (" + a.Detail + ")"
			}
			if first {
				line(group.label, "%s", s)
				first = false
			} else {
				more("%s", s)
			}
		}
	}
	if inc.SecretsFile != "" {
		line("New secret", "in %s (the last line for %s); it is never in a message", inc.SecretsFile, who(inc))
	}
	switch {
	case inc.State == "open" && inc.Stopped:
		line("Stopped", "its new calls are hung up while the incident is open; once the real user has the new secret: guard release %s", who(inc))
	case inc.State == message.EventClosed:
		line("Closed", "%s: no alert of it for incident_quiet", stamp(inc.Closed))
	case inc.State == "released":
		line("Released", "%s by the administrator (guard release)", stamp(inc.Closed))
	}
	line("More", "guard incidents (every outcome in full)")
	return b.String()
}

// digestMessage is one message of many incidents.
func (n *Notifier) digestMessage(incs []message.Incident, now time.Time) *message.Message {
	m := &message.Message{Kind: message.KindDigest, Event: message.EventDigest, Severity: detector.Warning.String(),
		Instance: n.instance, Time: now.UTC(), Incidents: incs}
	opened, closed := 0, 0
	var b strings.Builder
	for i := range incs {
		inc := &incs[i]
		if inc.Severity == detector.Critical.String() {
			m.Severity = inc.Severity
		}
		for _, a := range inc.Actions {
			if a.Result == policy.Failed.String() {
				m.Severity = detector.Critical.String()
			}
		}
		if slices.Contains(inc.Updates, message.EventOpened) {
			opened++
		}
		if inc.State != "open" {
			closed++
		}
		fmt.Fprintf(&b, "%s  %s  %s %s  %s", inc.ID, who(inc), inc.Rule, inc.Severity, strings.Join(inc.Updates, ", "))
		if len(inc.Sources) > 0 {
			fmt.Fprintf(&b, "  from %s", strings.Join(inc.Sources, ", "))
		}
		b.WriteByte('\n')
	}
	m.Mode = config.ModeObserve
	if n.enforcing() {
		m.Mode = config.ModeEnforce
	}
	window := time.Duration(n.cfg.DigestWindow).String()
	m.Title = fmt.Sprintf("digest: %d incidents (%d opened, %d closed): more than %d opened within %s", len(incs), opened, closed, n.cfg.DigestThreshold, window)
	head := fmt.Sprintf("%s\n\nMany incidents at once on %s (a botnet?): they are told together, one digest per %s, until they close.\n", m.Title, n.instance, window)
	if m.Mode != config.ModeEnforce {
		head += "The guard runs in observe mode: it did nothing (observe: would).\n"
	}
	m.Text = head + "\n" + b.String() + "\nMore: guard incidents\n"
	return m
}

// troubleMessage is the message of probe p's trouble, or of its end.
func (n *Notifier) troubleMessage(p *Probe, c *Condition, now time.Time) *message.Message {
	m := &message.Message{Kind: message.KindTrouble, Severity: detector.Critical.String(), Instance: n.instance, Time: now.UTC(),
		Trouble: &message.Trouble{What: p.What, Name: p.Name, Down: c.Down, Since: c.Since.UTC(), Problem: message.Clean(c.Problem), Detail: message.Clean(c.Detail)}}
	m.Mode = config.ModeObserve
	if n.enforcing() {
		m.Mode = config.ModeEnforce
	}
	why := ""
	if c.Problem != "" || c.Detail != "" {
		why = " (" + strings.TrimPrefix(m.Trouble.Problem+": "+m.Trouble.Detail, ": ") + ")"
	}
	long := now.Sub(c.Since).Round(time.Second) // how long it is (was) down
	var what string
	switch {
	case p.What == "ami" && c.Down:
		m.Event = message.EventAMIDown
		m.Title = fmt.Sprintf("AMI session %s down for %s%s", p.Name, long, why)
		what = "The guard is not logged in to Asterisk: "
		if p.Name == "events" {
			what += "it sees no call and stops no fraud until it is. "
		} else {
			what += "it cannot hang calls up until it is. "
		}
		what += "It keeps trying. Check Asterisk, ami.address, the secret and the user's permit/deny in manager.conf."
	case p.What == "ami":
		m.Event = message.EventAMIUp
		m.Title = fmt.Sprintf("AMI session %s logged in again after %s", p.Name, long)
		what = "The guard is logged in to Asterisk again."
	case c.Down:
		m.Event = message.EventFirewallDown
		m.Title = fmt.Sprintf("firewall unusable for %s%s", long, why)
		what = "The guard cannot set up its chain or apply its bans: addresses it bans are recorded but not dropped until it can. " +
			"It keeps trying. Check iptables (installed, the guard's capabilities, the xtables lock)."
	default:
		m.Event = message.EventFirewallUp
		m.Title = fmt.Sprintf("firewall works again after %s", long)
		what = "The firewall takes the guard's rules again; the recorded bans are applied."
	}
	m.Text = fmt.Sprintf("%s\n\n%s\n\nOn %s, since %s.\n", m.Title, what, n.instance, stamp(c.Since))
	return m
}

// stamp writes t in RFC 3339, UTC, to the second.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
