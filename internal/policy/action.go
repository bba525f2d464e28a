// Package policy decides what the guard does about an alert. It turns the
// [policy] table of the configuration into a Table of typed actions once,
// and for each alert, given the mode and what the alert's incident has
// done so far, returns the decisions to carry out: log the alert, hang up
// the extension's calls, block an address, rotate the secret.
//
// It is pure: no AMI, no goroutines, no clock (time is the caller's), no
// state of its own. The incident book (package incident) keeps the
// incidents, feeds Decide what one has done, and records what it decided.
package policy

import (
	"fmt"

	"github.com/astguard/astguard/internal/config"
)

// Action is something the policy can decide.
type Action uint8

// The actions, in the order Decide returns them.
const (
	// Alert logs the alert ("fraud alert"). It acts on nothing.
	Alert Action = iota + 1
	// Hangup hangs up the extension's calls, and its new calls while its
	// incident is open.
	Hangup
	// BlockIP drops an address in the firewall.
	BlockIP
	// RotateSecret gives the extension a new SIP secret. Decide returns it
	// after Hangup and BlockIP: carry it out after them.
	RotateSecret
	numActions
)

// actionNames are the names of the configuration and the logs.
var actionNames = [numActions]string{"", config.ActionAlert, config.ActionHangup, config.ActionBlockIP, config.ActionRotateSecret}

// String returns the action's name in the configuration: alert, hangup,
// block_ip, rotate_secret.
func (a Action) String() string {
	if a > 0 && a < numActions {
		return actionNames[a]
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// ParseAction returns the action of a configuration name.
func ParseAction(s string) (Action, bool) {
	for a := Alert; a < numActions; a++ {
		if actionNames[a] == s {
			return a, true
		}
	}
	return 0, false
}

// MarshalText writes the action's name.
func (a Action) MarshalText() ([]byte, error) {
	if a == 0 || a >= numActions {
		return nil, fmt.Errorf("policy: no action %d", uint8(a))
	}
	return []byte(actionNames[a]), nil
}

// UnmarshalText reads an action's name.
func (a *Action) UnmarshalText(b []byte) error {
	v, ok := ParseAction(string(b))
	if !ok {
		return fmt.Errorf("policy: %q is not an action", b)
	}
	*a = v
	return nil
}

// Responses are the actions that act on a key (all but Alert), in the
// order Decide returns them.
var Responses = [...]Action{Hangup, BlockIP, RotateSecret}

// Set is a set of actions.
type Set uint8

// Has reports whether a is in the set.
func (s Set) Has(a Action) bool { return s&(1<<a) != 0 }

// With returns the set with a added.
func (s Set) With(a Action) Set { return s | 1<<a }

// Without returns the set with a removed.
func (s Set) Without(a Action) Set { return s &^ (1 << a) }

// Mode is the configured mode.
type Mode uint8

// The modes.
const (
	// Observe decides as Enforce would and carries nothing out: every
	// action is decided once per incident as Would.
	Observe Mode = iota
	// Enforce carries the actions out.
	Enforce
)

// ModeOf returns the mode of a configuration's mode key: Enforce for
// "enforce", Observe for anything else (config validates it).
func ModeOf(s string) Mode {
	if s == config.ModeEnforce {
		return Enforce
	}
	return Observe
}

func (m Mode) String() string {
	if m == Enforce {
		return config.ModeEnforce
	}
	return config.ModeObserve
}

// Result is how far an action of an incident got.
type Result uint8

// The results. An action's outcome is Done, Failed, Skipped or Would;
// Running is an action decided and not yet reported on.
const (
	// None: not decided in the incident.
	None Result = iota
	// Running: decided in enforce mode, being carried out; never decided
	// again in the incident.
	Running
	// Done: carried out.
	Done
	// Failed: tried and failed; a later alert of the incident may decide it
	// again, up to MaxAttempts times in all.
	Failed
	// Skipped: refused, or pointless (a rotation refused because the peer
	// has an md5secret, an address that is never blocked, no address to
	// block); never decided again in the incident, except a block_ip
	// skipped because an extension's incident blocked the address, which
	// may run once that incident is over.
	Skipped
	// Would: decided in observe mode, or carried out by a dry run (a ban
	// through a dry-run firewall). Never decided again, except one decided
	// in observe mode (no attempt counted) once the mode is enforce (after
	// a reload): it is then decided for real.
	Would
	numResults
)

var resultNames = [numResults]string{"", "running", "done", "failed", "skipped", "would"}

// String returns the result's name in the logs: running, done, failed,
// skipped, would ("" for None).
func (r Result) String() string {
	if r < numResults {
		return resultNames[r]
	}
	return fmt.Sprintf("Result(%d)", uint8(r))
}

// MarshalText writes the result's name.
func (r Result) MarshalText() ([]byte, error) {
	if r == None || r >= numResults {
		return nil, fmt.Errorf("policy: no result %d", uint8(r))
	}
	return []byte(resultNames[r]), nil
}

// UnmarshalText reads a result's name.
func (r *Result) UnmarshalText(b []byte) error {
	for v := Running; v < numResults; v++ {
		if resultNames[v] == string(b) {
			*r = v
			return nil
		}
	}
	return fmt.Errorf("policy: %q is not a result", b)
}
