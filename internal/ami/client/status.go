package client

import (
	"strconv"
	"strings"
	"time"
)

// State is whether a session is logged in.
type State uint8

// The states of a session.
const (
	// StateConnecting: the first connection is being made.
	StateConnecting State = iota
	// StateUp: logged in.
	StateUp
	// StateDown: not logged in; Status.Problem says why. The client keeps
	// trying.
	StateDown
	// StateClosed: Close was called.
	StateClosed
)

var stateNames = [...]string{"connecting", "up", "down", "closed"}

// String returns "connecting", "up", "down" or "closed".
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Problem is why a session is not logged in.
type Problem uint8

// The problems of a session that is down.
const (
	ProblemNone Problem = iota
	// ProblemUnreachable: the connection could not be made (nothing
	// listening, no route, the name does not resolve).
	ProblemUnreachable
	// ProblemTLS: the TLS handshake failed (certificate, protocol).
	ProblemTLS
	// ProblemNoBanner: connected, but no AMI banner came in time, or the
	// first line was not one: not an AMI port, or Asterisk is stuck.
	ProblemNoBanner
	// ProblemLoginRefused: Asterisk refused the login (wrong user or
	// secret, the user's permit/deny, a refused challenge).
	ProblemLoginRefused
	// ProblemHandshake: the connection failed during the login (closed or
	// no reply in time).
	ProblemHandshake
	// ProblemLost: a logged-in connection ended: closed by Asterisk or the
	// network, or dead (nothing arrived after a Ping).
	ProblemLost
)

var problemNames = [...]string{"", "unreachable", "tls", "no_banner", "login_refused", "handshake", "lost"}

// String returns the problem's name: "unreachable", "tls", "no_banner",
// "login_refused", "handshake", "lost", or "" for none.
func (p Problem) String() string {
	if int(p) < len(problemNames) {
		return problemNames[p]
	}
	return "Problem(" + strconv.Itoa(int(p)) + ")"
}

// Status is the state of a session's link to Asterisk.
type Status struct {
	State   State
	Problem Problem // why it is down (ProblemNone while up)
	// Detail is the cause of Problem in words: the dial error, Asterisk's
	// Message for a refused login, what the first line was ...
	Detail string
	// Since is when State or Problem last changed.
	Since time.Time
	// ActionsTimingOut is true from an action that got no reply within its
	// timeout until the next reply arrives: Asterisk is not answering this
	// session's actions.
	ActionsTimingOut bool
	// EventsSilent is true while no event arrived for Options.SilenceAlarm.
	EventsSilent bool
	// Banner is the banner of the last connection, e.g.
	// "Asterisk Call Manager/9.0.0" ("" before any).
	Banner   string
	Connects uint64 // logins, the first included
}

// Up reports whether the session is logged in.
func (s Status) Up() bool { return s.State == StateUp }

// ParseVersion returns the AMI version of a banner ("Asterisk Call
// Manager/9.0.0" gives 9, 0). ok is false when the banner has no version
// of the form major.minor[.patch].
func ParseVersion(banner string) (major, minor int, ok bool) {
	_, v, found := strings.Cut(banner, "/")
	if !found {
		return 0, 0, false
	}
	maj, rest, _ := strings.Cut(v, ".")
	mnr, _, _ := strings.Cut(rest, ".")
	var err1, err2 error
	major, err1 = strconv.Atoi(maj)
	minor, err2 = strconv.Atoi(mnr)
	if err1 != nil || err2 != nil || major < 0 || minor < 0 {
		return 0, 0, false
	}
	return major, minor, true
}
