// Package message is what the guard's notifications say: the Message
// every sender delivers (the webhook's JSON body, the mail's subject and
// text, the Alertmanager alert's annotations), and the webhook's body
// templates, which insert its values escaped for the template's format.
//
// It imports nothing of the guard, so that the configuration can check a
// body template when it is loaded (package config) and the notifier
// (package notify) can fill it.
//
// Every string of a Message is clean: the notifier writes the values an
// attacker may have shaped (dialled numbers, account names) with their
// control characters escaped (a CR as \r), so no value holds a line break
// but Text, whose lines are the notifier's own.
package message

import (
	"time"
)

// The kinds of Message.
const (
	KindIncident = "incident" // an incident opened, changed or closed
	KindDigest   = "digest"   // many incidents at once (a botnet)
	KindTrouble  = "trouble"  // the guard's own trouble, or its end
	KindTest     = "test"     // `guard notify-test`
)

// The events of Message.Event.
const (
	EventOpened       = "opened"        // the incident opened
	EventUpdated      = "updated"       // an action's outcome came
	EventClosed       = "closed"        // the incident closed
	EventDigest       = "digest"        // a digest of incidents
	EventAMIDown      = "ami_down"      // an AMI session is down for trouble_after
	EventAMIUp        = "ami_up"        // and logged in again
	EventFirewallDown = "firewall_down" // the firewall fails for trouble_after
	EventFirewallUp   = "firewall_up"   // and works again
	EventTest         = "test"          // a sample
)

// Message is one notification.
type Message struct {
	Kind  string `json:"kind"`
	Event string `json:"event"`
	// Severity is "warning" or "critical": an incident's is that of the
	// alert that opened it, critical when an action failed; the guard's
	// trouble is critical.
	Severity string `json:"severity"`
	// Instance names the guard (notify.instance, or the host name).
	Instance string `json:"instance"`
	// Mode is "observe" or "enforce". In observe mode the guard does
	// nothing: the actions say "observe: would".
	Mode string    `json:"mode"`
	Time time.Time `json:"time"`
	// Title is one line (the mail's subject); Text the whole message in
	// plain text, lines ending in \n.
	Title string `json:"title"`
	Text  string `json:"text"`
	// Incident is the incident of a KindIncident message.
	Incident *Incident `json:"incident,omitempty"`
	// Incidents are those of a digest.
	Incidents []Incident `json:"incidents,omitempty"`
	// Trouble is the guard's trouble (KindTrouble).
	Trouble *Trouble `json:"trouble,omitempty"`
}

// Incident is an incident as a notification tells it.
type Incident struct {
	ID string `json:"id"`
	// State is "open", "closed" (no alert for incident_quiet) or
	// "released" (guard release).
	State string `json:"state"`
	// Updates say what changed since the incident's last message:
	// "opened", "hangup done", "block_ip failed", "closed".
	Updates []string `json:"updates"`
	// Extension ("SIP/200") or Address: the incident's key.
	Extension string `json:"extension,omitempty"`
	Address   string `json:"address,omitempty"`
	// Rule and Severity are those of the alert that opened it.
	Rule      string    `json:"rule"`
	Severity  string    `json:"severity"`
	Opened    time.Time `json:"opened"`
	LastAlert time.Time `json:"last_alert"`
	Closed    time.Time `json:"closed,omitzero"`
	// Alerts counts its alerts; Figures are the first of them.
	Alerts  int      `json:"alerts"`
	Figures []Figure `json:"figures"`
	// Stopped: while it is open, the extension's new calls are hung up.
	Stopped bool `json:"stopped"`
	// Sources are the addresses Asterisk received the extension's
	// requests from; Contacts the addresses its client supplied (never
	// blocked); Accounts the names tried from an address.
	Sources  []string `json:"sources"`
	Contacts []string `json:"contacts,omitempty"`
	Accounts []string `json:"accounts,omitempty"`
	// Numbers are the first numbers dialled (up to 5).
	Numbers []string `json:"numbers"`
	// Actions are the responses decided, in the order hangup, block_ip,
	// rotate_secret, each with its latest outcome.
	Actions []Action `json:"actions"`
	// SecretsFile is where the new secret is, once rotate_secret is
	// done: the path of the file, never the secret.
	SecretsFile string `json:"secrets_file,omitempty"`
}

// Figure is one alert of an incident: what its rule counted.
type Figure struct {
	Rule     string `json:"rule"`
	Severity string `json:"severity"`
	Count    int    `json:"count"`
	Window   string `json:"window"`
	Reason   string `json:"reason"`
}

// Action is one response of an incident and its latest outcome.
type Action struct {
	Action string `json:"action"` // hangup, block_ip, rotate_secret
	// Result is running, done, failed, skipped or would (observe mode,
	// or a dry-run firewall's ban).
	Result   string `json:"result"`
	Attempts int    `json:"attempts,omitempty"`
	Target   string `json:"target,omitempty"`
	Detail   string `json:"detail,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Trouble is the guard's own trouble.
type Trouble struct {
	// What is "ami" (an AMI session is not logged in) or "firewall" (it
	// cannot be set up, or refuses rules).
	What string `json:"what"`
	// Name is the AMI session ("events", "urgent"), or "firewall".
	Name string `json:"name"`
	// Down: the trouble goes on; false: it ended.
	Down bool `json:"down"`
	// Since is when it started.
	Since time.Time `json:"since"`
	// Problem is why, as /healthz says it ("login_refused", ...) and
	// Detail the cause.
	Problem string `json:"problem,omitempty"`
	Detail  string `json:"detail,omitempty"`
}
