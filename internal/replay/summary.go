package replay

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

// Verdict says what the live guard would have done about an extension or an
// address, under the policy and mode of the configuration.
type Verdict uint8

// Verdicts, from the least to the most.
const (
	// VerdictWarning: warnings only, and the policy takes no action on them.
	VerdictWarning Verdict = iota + 1
	// VerdictNoAction: a critical alert, but the policy takes no action on
	// it (its list has only "alert", or nothing).
	VerdictNoAction
	// VerdictWouldAct: the policy acts on an alert, but the mode is
	// observe: the guard would only have logged what it would do.
	VerdictWouldAct
	// VerdictStopped: the policy acts on an alert and the mode is enforce.
	VerdictStopped
)

var verdictNames = [...]string{"", "warning", "no action", "would act", "stopped"}

// String returns the verdict as the summary prints it.
func (v Verdict) String() string {
	if int(v) < len(verdictNames) && v > 0 {
		return verdictNames[v]
	}
	return "unknown"
}

// Policy is what a summary needs of the configuration.
type Policy struct {
	// Acts reports whether the policy takes an action other than logging
	// on an alert of this rule and severity.
	Acts func(detector.Rule, detector.Severity) bool
	// Enforce is true in mode enforce.
	Enforce bool
}

// RuleCount is one rule that alerted about a key.
type RuleCount struct {
	Rule     detector.Rule
	Severity detector.Severity // the highest of its alerts
	Count    int               // the highest count of its alerts of that severity
}

// Key is one extension or address the alerts of a transcript named.
type Key struct {
	Tech      ami.Tech   // extension keys
	Extension string     // extension keys
	IP        netip.Addr // address keys
	Severity  detector.Severity
	Verdict   Verdict
	Rules     []RuleCount  // highest severity first, then in rule order
	Addresses []netip.Addr // extension keys: the addresses Asterisk saw its packets come from, newest alert's first
	Contacts  []netip.Addr // extension keys: the addresses its client supplied (never blocked), not among Addresses
	Accounts  []string     // address keys: the accounts tried from it
	firstSeq  int
}

// IsExtension reports whether the key is an extension (else an address).
func (k *Key) IsExtension() bool { return k.Extension != "" }

// Name returns "SIP/200" or the address.
func (k *Key) Name() string {
	if k.IsExtension() {
		return k.Tech.String() + "/" + k.Extension
	}
	return k.IP.String()
}

// FileSummary sums up the replay of one transcript for a person.
type FileSummary struct {
	Path   string
	Result Result
	Err    error
	Keys   []Key // the most serious verdict first, then by first alert
}

// Summarize groups the alerts of one transcript by extension and address.
func Summarize(fr *FileResult, pol Policy) FileSummary {
	s := FileSummary{Path: fr.Path, Result: fr.Result, Err: fr.Err}
	type id struct {
		tech ami.Tech
		ext  string
		ip   netip.Addr
	}
	index := map[id]int{}
	// Newest alert first, so that the addresses come newest first.
	for i := len(fr.Alerts) - 1; i >= 0; i-- {
		a := &fr.Alerts[i]
		k := id{a.Tech, a.Extension, a.IP}
		if !a.IsExtension() {
			k = id{ip: a.IP}
		}
		j, ok := index[k]
		if !ok {
			j = len(s.Keys)
			index[k] = j
			s.Keys = append(s.Keys, Key{Tech: k.tech, Extension: k.ext, IP: k.ip})
		}
		key := &s.Keys[j]
		key.firstSeq = a.Seq
		key.Severity = max(key.Severity, a.Severity)
		v := VerdictWarning
		switch {
		case pol.Acts != nil && pol.Acts(a.Rule, a.Severity) && pol.Enforce:
			v = VerdictStopped
		case pol.Acts != nil && pol.Acts(a.Rule, a.Severity):
			v = VerdictWouldAct
		case a.Severity == detector.Critical:
			v = VerdictNoAction
		}
		key.Verdict = max(key.Verdict, v)
		key.addRule(a)
		for _, addr := range a.Sources {
			if !slices.Contains(key.Addresses, addr) {
				key.Addresses = append(key.Addresses, addr)
			}
		}
		for _, addr := range a.Contacts {
			if !slices.Contains(key.Contacts, addr) {
				key.Contacts = append(key.Contacts, addr)
			}
		}
		for _, acct := range a.Accounts {
			if !slices.Contains(key.Accounts, acct) {
				key.Accounts = append(key.Accounts, acct)
			}
		}
	}
	for i := range s.Keys {
		slices.SortFunc(s.Keys[i].Rules, func(a, b RuleCount) int {
			return cmp.Or(cmp.Compare(b.Severity, a.Severity), cmp.Compare(a.Rule, b.Rule))
		})
	}
	slices.SortStableFunc(s.Keys, func(a, b Key) int {
		return cmp.Or(cmp.Compare(b.Verdict, a.Verdict), cmp.Compare(b.Severity, a.Severity),
			cmp.Compare(kind(a), kind(b)), cmp.Compare(a.firstSeq, b.firstSeq))
	})
	return s
}

// kind orders extensions before addresses.
func kind(k Key) int {
	if k.IsExtension() {
		return 0
	}
	return 1
}

// addRule counts alert a in its rule's entry.
func (k *Key) addRule(a *detector.Alert) {
	for i := range k.Rules {
		r := &k.Rules[i]
		if r.Rule != a.Rule {
			continue
		}
		switch {
		case a.Severity > r.Severity:
			r.Severity, r.Count = a.Severity, a.Count
		case a.Severity == r.Severity:
			r.Count = max(r.Count, a.Count)
		}
		return
	}
	k.Rules = append(k.Rules, RuleCount{Rule: a.Rule, Severity: a.Severity, Count: a.Count})
}

// units name what each rule counts, for an extension and for an address.
var units = map[detector.Rule][2]string{
	detector.RuleCallRate:      {"calls", ""},
	detector.RuleConcurrent:    {"live calls", ""},
	detector.RulePrefixGuess:   {"prefixes", ""},
	detector.RuleInternational: {"calls", ""},
	detector.RuleFailedProbes:  {"calls", "attempts"},
	detector.RuleAuthFailures:  {"", "failures"},
	detector.RuleNewSource:     {"", ""},
}

// rules renders a key's rules at its highest severity, then the others in
// parentheses: "prefix_guess 3 prefixes (warning: call_rate 3 calls)".
func (k *Key) rules() string {
	var sb strings.Builder
	for i, r := range k.Rules {
		switch {
		case i == 0:
		case r.Severity != k.Rules[i-1].Severity:
			sb.WriteString(" (" + r.Severity.String() + ": ")
		default:
			sb.WriteString(", ")
		}
		sb.WriteString(r.Rule.String())
		u := units[r.Rule][0]
		if !k.IsExtension() {
			u = units[r.Rule][1]
		}
		if u != "" {
			fmt.Fprintf(&sb, " %d %s", r.Count, u)
		}
	}
	if len(k.Rules) > 0 && k.Rules[len(k.Rules)-1].Severity != k.Rules[0].Severity {
		sb.WriteString(")")
	}
	return sb.String()
}

// maxListed is how many addresses or accounts a summary line lists.
const maxListed = 4

// who renders the addresses of an extension, or the accounts tried from an
// address.
func (k *Key) who() string {
	var items []string
	prefix := "tried "
	if k.IsExtension() {
		prefix = "from "
		for _, a := range k.Addresses {
			items = append(items, a.String())
		}
	} else {
		items = k.Accounts
	}
	out := list(prefix, items)
	var contacts []string
	for _, a := range k.Contacts {
		if !slices.Contains(k.Addresses, a) {
			contacts = append(contacts, a.String())
		}
	}
	if c := list("contact ", contacts); c != "" {
		if out != "" {
			out += "; "
		}
		out += c + " (client-supplied)"
	}
	return out
}

// list renders items after prefix, the first maxListed of them.
func list(prefix string, items []string) string {
	if len(items) == 0 {
		return ""
	}
	if len(items) > maxListed {
		return prefix + strings.Join(items[:maxListed], ", ") + fmt.Sprintf(" and %d more", len(items)-maxListed)
	}
	return prefix + strings.Join(items, ", ")
}

// WriteSummary writes the summaries as a few lines for a person: per
// transcript its counts, then one line per extension and address its alerts
// named; with more than one transcript, the totals.
func WriteSummary(w io.Writer, files []FileSummary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	var total Result
	failed := 0
	for i := range files {
		f := &files[i]
		r := f.Result
		if f.Err != nil {
			failed++
			fmt.Fprintf(tw, "replay failed after %d messages: %v\n", r.Messages, f.Err)
			continue
		}
		fmt.Fprintf(tw, "%s: %s\n", f.Path, counts(r))
		for j := range f.Keys {
			k := &f.Keys[j]
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", k.Name(), k.Verdict, k.Severity, k.who(), k.rules())
		}
		total.Messages += r.Messages
		total.Skipped += r.Skipped
		total.Malformed += r.Malformed
		total.Oversized += r.Oversized
		total.Alerts += r.Alerts
		total.Detector.Forged += r.Detector.Forged
	}
	if len(files) > 1 {
		fmt.Fprintf(tw, "total: %d files (%d failed), %s\n", len(files), failed, counts(total))
	}
	return tw.Flush()
}

// counts renders the message and alert counts of a result.
func counts(r Result) string {
	s := fmt.Sprintf("%d messages (%d of unused events skipped, %d malformed, %d oversized), %d alerts",
		r.Messages, r.Skipped, r.Malformed-r.Oversized, r.Oversized, r.Alerts)
	if r.Detector.Forged > 0 {
		s += fmt.Sprintf("; %d forged (a header repeated, as by a caller name carrying a line break): not used", r.Detector.Forged)
	}
	return s
}
