// Package config reads astguard's TOML configuration.
//
// Decoding is strict: keys are matched exactly (case-sensitively), an unknown
// key or a value of the wrong type is an error that names the key, and
// Validate reports every problem at once, one per line. Error texts are
// sentences that start with the dotted key they are about, e.g.
//
//	detector.prefix_guess.window must be > 0
//
// The values of Default are those of config.toml.example.
package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// Config is the whole configuration file.
type Config struct {
	// Mode is ModeObserve (log what would be done, do nothing) or
	// ModeEnforce (act).
	Mode    string  `toml:"mode"`
	AMI     AMI     `toml:"ami"`
	Log     Log     `toml:"log"`
	Metrics Metrics `toml:"metrics"`
	// Detection is the [detector] table (named so because the method
	// Detector converts it to the detector's own struct).
	Detection Detection `toml:"detector"`
	Allow     Allow     `toml:"allow"`
	Response  Response  `toml:"response"`
	Secrets   Secrets   `toml:"secrets"`
	Policy    Policy    `toml:"policy"`
	Notify    Notify    `toml:"notify"`
	CrowdSec  CrowdSec  `toml:"crowdsec"`
}

// The values of Config.Mode.
const (
	ModeObserve = "observe" // log what would be done and do nothing
	ModeEnforce = "enforce" // act
)

// AMI is the [ami] table: how to reach the Asterisk Manager Interface.
type AMI struct {
	// Address is host:port, or tls://host:port for AMI over TLS (Asterisk's
	// tlsenable in manager.conf). IPv6 literals are bracketed: [::1]:5038.
	Address  string `toml:"address"`
	Username string `toml:"username"`
	// Secret is the manager.conf secret. Load replaces it with the value of
	// SecretEnv or the first line of SecretFile when those are set.
	Secret     Secret `toml:"secret"`
	SecretFile string `toml:"secret_file"`
	// Auth is how the guard logs in: AuthMD5 (a Challenge, then a hash of
	// the challenge and the secret: the secret never crosses the network)
	// or AuthPlain (the secret in clear, as Login's Secret header).
	Auth string `toml:"auth"`
	// TLSCA is a PEM file of the certificate authorities the server's
	// certificate must chain to, for a tls:// address ("": the system's).
	// Load resolves a relative path against the configuration's directory.
	TLSCA string `toml:"tls_ca"`
	// TLSServerName is the name the server's certificate must carry (""
	// the host of the address).
	TLSServerName string `toml:"tls_server_name"`
	// ReconnectInterval is the first pause before a reconnect attempt; each
	// failed attempt doubles it, with jitter, up to ReconnectMax.
	ReconnectInterval Duration `toml:"reconnect_interval"`
	ReconnectMax      Duration `toml:"reconnect_max"`
	// ActionTimeout is how long an action may wait for its reply.
	ActionTimeout Duration `toml:"action_timeout"`
	// Keepalive is how long a session may go without receiving anything
	// before the guard sends a Ping; nothing at all within ActionTimeout
	// after it and the connection is dead.
	Keepalive Duration `toml:"keepalive"`
	// QueueSize is how many events are buffered between the AMI reader and
	// the detector.
	QueueSize int `toml:"queue_size"`
}

// The values of AMI.Auth.
const (
	AuthMD5   = "md5"
	AuthPlain = "plain"
)

// Endpoint returns ami.address without its tls:// prefix, and whether the
// prefix was there.
func (a *AMI) Endpoint() (hostport string, useTLS bool) {
	if rest, ok := strings.CutPrefix(a.Address, tlsScheme); ok {
		return rest, true
	}
	return a.Address, false
}

const tlsScheme = "tls://"

// TLSConfig returns the TLS settings of a tls:// address: the CAs of
// ami.tls_ca (the system's when empty) and ami.tls_server_name (the host of
// the address when empty). It returns nil for a plain address.
func (a *AMI) TLSConfig() (*tls.Config, error) {
	hostport, useTLS := a.Endpoint()
	if !useTLS {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: a.TLSServerName}
	if cfg.ServerName == "" {
		if host, _, err := net.SplitHostPort(hostport); err == nil {
			cfg.ServerName = host
		}
	}
	if a.TLSCA != "" {
		pem, err := os.ReadFile(a.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("ami.tls_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ami.tls_ca: %s holds no PEM certificate", a.TLSCA)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// Log is the [log] table.
type Log struct {
	Level string `toml:"level"` // debug, info, warn or error
}

// Metrics is the [metrics] table: the Prometheus metrics and health
// endpoint.
type Metrics struct {
	// Listen is the host:port of the HTTP endpoint that serves /metrics and
	// /healthz; empty turns it off.
	Listen string `toml:"listen"`
	// SilenceAlarm is how long the guard may go without receiving an event
	// before /healthz reports it blind.
	SilenceAlarm Duration `toml:"silence_alarm"`
}

// Detection is the [detector] table.
type Detection struct {
	Cooldown      Duration `toml:"cooldown"`
	MaxExtensions int      `toml:"max_extensions"`
	MaxAddresses  int      `toml:"max_addresses"`
	IdleExpiry    Duration `toml:"idle_expiry"`
	// UnauthenticatedCritical lets endpoints never seen authenticating
	// (trunks, IP-authenticated peers) raise critical alerts.
	UnauthenticatedCritical bool          `toml:"unauthenticated_critical"`
	CallRate                CallRate      `toml:"call_rate"`
	Concurrent              Levels        `toml:"concurrent"`
	PrefixGuess             PrefixGuess   `toml:"prefix_guess"`
	International           International `toml:"international"`
	FailedProbes            Threshold     `toml:"failed_probes"`
	AuthFailures            Threshold     `toml:"auth_failures"`
	NewSource               NewSource     `toml:"new_source"`
}

// Levels are a rule's warning and critical levels; 0 disables a severity.
type Levels struct {
	Warning  int `toml:"warning"`
	Critical int `toml:"critical"`
}

// Threshold is a rule's levels over a sliding window.
type Threshold struct {
	Window   Duration `toml:"window"`
	Warning  int      `toml:"warning"`
	Critical int      `toml:"critical"`
}

// CallRate is [detector.call_rate]: a short burst window and a long window.
type CallRate struct {
	BurstWindow   Duration `toml:"burst_window"`
	BurstWarning  int      `toml:"burst_warning"`
	BurstCritical int      `toml:"burst_critical"`
	Window        Duration `toml:"window"`
	Warning       int      `toml:"warning"`
	Critical      int      `toml:"critical"`
}

// PrefixGuess is [detector.prefix_guess].
type PrefixGuess struct {
	Digits   int      `toml:"digits"`
	Window   Duration `toml:"window"`
	Warning  int      `toml:"warning"`
	Critical int      `toml:"critical"`
}

// International is [detector.international]. The high-risk levels share
// Window with the international levels.
type International struct {
	AccessCodes       []string `toml:"access_codes"`
	OutsideLine       string   `toml:"outside_line"`
	Window            Duration `toml:"window"`
	Warning           int      `toml:"warning"`
	Critical          int      `toml:"critical"`
	HighRiskCountries []string `toml:"high_risk_countries"`
	HighRiskWarning   int      `toml:"high_risk_warning"`
	HighRiskCritical  int      `toml:"high_risk_critical"`
}

// NewSource is [detector.new_source].
type NewSource struct {
	Enabled bool `toml:"enabled"`
}

// Allow is the [allow] table: what the detector never counts.
type Allow struct {
	Extensions   []string `toml:"extensions"`
	Networks     []string `toml:"networks"`
	Destinations []string `toml:"destinations"`
	// WidestIPv4 and WidestIPv6 are the shortest prefix lengths an entry
	// of allow.networks or response.never_block may have unless
	// ConfirmWide lists it: a wider network is refused, so that a typo
	// such as "10.1.2.3/1" cannot turn the guard off for half the
	// Internet.
	WidestIPv4 int `toml:"widest_ipv4"`
	WidestIPv6 int `toml:"widest_ipv6"`
	// ConfirmWide lists the networks wider than those limits that
	// allow.networks or response.never_block may hold, each the same
	// network as its entry there.
	ConfirmWide []string `toml:"confirm_wide"`
}

// Response is the [response] table: how the guard acts on alerts.
type Response struct {
	BanDuration Duration `toml:"ban_duration"` // how long block_ip drops an address
	// IncidentQuiet closes an incident when no alert of its extension or
	// address has come for this long. Each action runs at most once per
	// incident, and a stopped extension's new calls are hung up while its
	// incident is open.
	IncidentQuiet Duration `toml:"incident_quiet"`
	Firewall      string   `toml:"firewall"` // FirewallIPTables or FirewallDryRun
	// FirewallMatch says how the chain matches banned addresses:
	// MatchAuto, MatchIPSet or MatchRules.
	FirewallMatch string `toml:"firewall_match"`
	Chain         string `toml:"chain"` // the guard's own iptables chain
	IPv6          bool   `toml:"ipv6"`  // also manage ip6tables
	// IPv6Prefix is the network an IPv6 address is counted (auth_failures,
	// failed_probes) and banned by: 64 is its /64.
	IPv6Prefix int `toml:"ipv6_prefix"`
	// StateFile, SecretsFile and AdminSocket are absolute paths.
	StateFile   string `toml:"state_file"`   // the bans, kept across restarts
	SecretsFile string `toml:"secrets_file"` // new SIP secrets, one JSON line each
	AdminSocket string `toml:"admin_socket"` // Unix socket of `guard bans` and `guard unblock`
	// NeverBlock are addresses and CIDR networks never blocked, besides
	// allow.networks; see Config.NeverBlock.
	NeverBlock []string `toml:"never_block"`
	// ProtectPreviousSources is how long after a rotation the extension's
	// earlier addresses are not blocked; 0 disables the protection.
	ProtectPreviousSources Duration `toml:"protect_previous_sources"`
	HangupCause            int      `toml:"hangup_cause"`  // Q.850 cause sent with Hangup
	RetryMax               int      `toml:"retry_max"`     // attempts per failed action
	RetryBackoff           Duration `toml:"retry_backoff"` // first pause between attempts, doubled each time
}

// The values of Response.Firewall.
const (
	FirewallIPTables = "iptables" // iptables (and ip6tables when IPv6 is set)
	FirewallDryRun   = "dry-run"  // log the rules, change nothing
)

// The values of Response.FirewallMatch.
const (
	MatchAuto  = "auto"  // kernel address sets where the kernel has them, else rules
	MatchIPSet = "ipset" // kernel address sets (ipset) matched by one rule each
	MatchRules = "rules" // one iptables rule per ban
)

// Policy is the [policy] table: for each rule, the actions taken on its
// warning and critical alerts. Look them up with Actions.
type Policy struct {
	CallRate      RulePolicy `toml:"call_rate"`
	Concurrent    RulePolicy `toml:"concurrent"`
	PrefixGuess   RulePolicy `toml:"prefix_guess"`
	International RulePolicy `toml:"international"`
	FailedProbes  RulePolicy `toml:"failed_probes"`
	AuthFailures  RulePolicy `toml:"auth_failures"`
	NewSource     RulePolicy `toml:"new_source"`
}

// RulePolicy is one rule's [policy.<rule>] table. Each list holds distinct
// actions (ActionAlert, ActionHangup, ActionRotateSecret, ActionBlockIP);
// an empty list takes no action, and the alert is only logged at debug
// level.
type RulePolicy struct {
	Warning  []string `toml:"warning"`
	Critical []string `toml:"critical"`
}

// The actions of a RulePolicy.
const (
	ActionAlert        = "alert"         // log the alert
	ActionHangup       = "hangup"        // hang up the extension's calls
	ActionRotateSecret = "rotate_secret" // give the extension a new SIP secret
	ActionBlockIP      = "block_ip"      // drop the source addresses in the firewall
)

// actions are the valid actions, in the order error texts list them.
var actions = []string{ActionAlert, ActionHangup, ActionRotateSecret, ActionBlockIP}

// SecretEnv is the environment variable that, when set and not empty,
// overrides ami.secret and ami.secret_file.
const SecretEnv = "ASTGUARD_AMI_SECRET"

// defaultHighRiskCountries are international revenue share fraud hot spots.
var defaultHighRiskCountries = []string{
	"53", "216", "218", "220", "221", "222", "223", "224", "225", "226",
	"227", "228", "229", "231", "232", "234", "235", "236", "237", "238",
	"239", "240", "241", "242", "243", "245", "247", "248", "249", "252",
	"253", "255", "256", "257", "261", "263", "269", "290", "371", "372",
	"375", "381", "423", "670", "672", "673", "674", "675", "676", "677",
	"678", "679", "680", "681", "682", "683", "685", "686", "687", "688",
	"689", "690", "691", "692", "870", "881", "882", "883", "979", "1268",
	"1284", "1473", "1649", "1664", "1758", "1767", "1784", "1809", "1829", "1849",
	"1868", "1869", "1876",
}

// Default returns a new Config holding the values of config.toml.example.
func Default() *Config {
	// act is what a rule with hangup, rotate_secret and block_ip does when
	// critical; probe is what an address rule does.
	act := func() RulePolicy {
		return RulePolicy{
			Warning:  []string{ActionAlert},
			Critical: []string{ActionAlert, ActionHangup, ActionRotateSecret, ActionBlockIP},
		}
	}
	probe := func() RulePolicy {
		return RulePolicy{Warning: []string{ActionAlert}, Critical: []string{ActionAlert, ActionBlockIP}}
	}
	return &Config{
		Mode: ModeObserve,
		AMI: AMI{
			Address:           "127.0.0.1:5038",
			Username:          "guard",
			Auth:              AuthMD5,
			ReconnectInterval: Duration(2 * time.Second),
			ReconnectMax:      Duration(30 * time.Second),
			ActionTimeout:     Duration(3 * time.Second),
			Keepalive:         Duration(5 * time.Second),
			QueueSize:         65536,
		},
		Log:     Log{Level: "info"},
		Metrics: Metrics{SilenceAlarm: Duration(5 * time.Minute)},
		Detection: Detection{
			Cooldown:      Duration(5 * time.Minute),
			MaxExtensions: 100000,
			MaxAddresses:  50000,
			IdleExpiry:    Duration(time.Hour),
			CallRate: CallRate{
				BurstWindow: Duration(time.Second), BurstWarning: 3, BurstCritical: 5,
				Window: Duration(time.Minute), Warning: 30, Critical: 60,
			},
			Concurrent:  Levels{Warning: 4, Critical: 8},
			PrefixGuess: PrefixGuess{Digits: 8, Window: Duration(10 * time.Minute), Warning: 2, Critical: 3},
			International: International{
				AccessCodes:       []string{"00", "011", "+"},
				Window:            Duration(10 * time.Minute),
				Warning:           10,
				Critical:          20,
				HighRiskCountries: append([]string(nil), defaultHighRiskCountries...),
				HighRiskWarning:   1,
				HighRiskCritical:  3,
			},
			FailedProbes: Threshold{Window: Duration(time.Minute), Warning: 3, Critical: 5},
			AuthFailures: Threshold{Window: Duration(time.Minute), Warning: 3, Critical: 5},
			NewSource:    NewSource{Enabled: true},
		},
		// Empty, not nil: decoding `key = []` yields an empty slice, and the
		// example file must decode to exactly Default().
		Allow: Allow{Extensions: []string{}, Networks: []string{}, Destinations: []string{},
			WidestIPv4: 8, WidestIPv6: 32, ConfirmWide: []string{}},
		Response: Response{
			BanDuration:            Duration(24 * time.Hour),
			IncidentQuiet:          Duration(15 * time.Minute),
			Firewall:               FirewallIPTables,
			FirewallMatch:          MatchAuto,
			Chain:                  "ASTGUARD",
			IPv6:                   true,
			IPv6Prefix:             64,
			StateFile:              "/var/lib/astguard/bans.json",
			SecretsFile:            "/var/lib/astguard/secrets.jsonl",
			AdminSocket:            "/run/astguard/admin.sock",
			NeverBlock:             []string{},
			ProtectPreviousSources: Duration(24 * time.Hour),
			HangupCause:            21,
			RetryMax:               5,
			RetryBackoff:           Duration(200 * time.Millisecond),
		},
		Secrets: defaultSecrets(),
		Policy: Policy{
			CallRate:      act(),
			Concurrent:    act(),
			PrefixGuess:   act(),
			International: act(),
			FailedProbes:  probe(),
			AuthFailures:  probe(),
			NewSource:     RulePolicy{Warning: []string{ActionAlert}, Critical: []string{ActionAlert}},
		},
		Notify:   defaultNotify(),
		CrowdSec: defaultCrowdSec(),
	}
}

// Load reads the file at path, decodes it over Default(), resolves the AMI
// secret (SecretEnv, then ami.secret_file, then ami.secret; a relative
// secret_file is taken relative to the directory of path) and validates the
// result. An empty secret is not an error here; see RequireSecret.
// On error the Config is nil and the error lists every problem, one per
// line in the order of the file's lines, each a *Problem (see Problems)
// that starts with "PATH:LINE: " (or "PATH: " when the key is not in the
// file); a syntax error comes alone.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parse(path, data, true)
}

// Parse decodes data over Default() and validates the result. It does no
// I/O: it neither reads ami.secret_file nor looks at SecretEnv (Load does).
// On error the Config is nil and the error lists every problem, one per
// line: those of decoding in file order, then Validate's in the order of the
// example file; unlike Load's, their text has no file or line (each
// *Problem still has its Line).
func Parse(data []byte) (*Config, error) {
	return parse("", data, false)
}

// parse is Load (file is its path, resolve true) and Parse. Every problem
// is reported: those of decoding, then the secret's, then Validate's.
func parse(file string, data []byte, resolve bool) (*Config, error) {
	c, errs, err := decode(data)
	if err != nil {
		var se *syntaxError
		if errors.As(err, &se) {
			se.file = file
		}
		return nil, err
	}
	if resolve {
		if err := c.resolveSecret(filepath.Dir(file)); err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, c.resolveCrowdSec(filepath.Dir(file))...)
		if c.AMI.TLSCA != "" && !filepath.IsAbs(c.AMI.TLSCA) {
			c.AMI.TLSCA = filepath.Join(filepath.Dir(file), c.AMI.TLSCA)
		}
		errs = append(errs, c.resolveNotifySecrets(filepath.Dir(file))...)
	}
	if err := c.Validate(); err != nil {
		errs = append(errs, err.(interface{ Unwrap() []error }).Unwrap()...)
	} else if resolve {
		if _, err := c.AMI.TLSConfig(); err != nil {
			errs = append(errs, err) // the CA file cannot be used
		}
		if _, err := c.Notify.Email.EmailTLSCA(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := locate(file, data, errs); err != nil {
		return nil, err
	}
	return c, nil
}

// decode decodes data over Default(). A syntax error comes back alone (as
// err), with its position. Otherwise every unknown key and every value of
// the wrong type is reported in problems, in file order, and left out, so
// that the rest is decoded and can be validated too.
func decode(data []byte) (c *Config, problems []error, err error) {
	s := string(data)
	var raw map[string]any
	md, err := toml.Decode(s, &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, nil, newSyntaxError(pe, s)
		}
		return nil, nil, err
	}
	problems, bad := checkKeys(md, raw)
	if len(bad) > 0 {
		for _, k := range bad {
			deleteKey(raw, k)
		}
		var buf strings.Builder
		if err := toml.NewEncoder(&buf).Encode(raw); err != nil {
			return nil, nil, err // not reached: what is left are values of the schema's kinds
		}
		s = buf.String()
	}
	c = Default()
	md, err = toml.Decode(s, c)
	if err != nil {
		return nil, nil, err // not reached: checkKeys accepted every value left
	}
	for _, k := range md.Undecoded() { // not reached either: checkKeys rejected unknown keys
		problems = append(problems, fmt.Errorf("unknown key %s", k))
	}
	return c, problems, nil
}

// deleteKey removes the value at path from raw.
func deleteKey(raw map[string]any, path toml.Key) {
	if len(path) == 0 {
		return
	}
	if m, ok := lookup(raw, path[:len(path)-1]).(map[string]any); ok {
		delete(m, path[len(path)-1])
	}
}

// syntaxError is a TOML syntax error. Its text is one line with the
// position; errors.As(err, new(toml.ParseError)) gives the toml error, whose
// ErrorWithPosition shows the offending line.
type syntaxError struct {
	file      string // "" for Parse
	line, col int
	pe        toml.ParseError
}

// newSyntaxError takes the position from the error's byte offset: toml's
// Line is one too far when the error is at a line end. The column counts
// characters, as editors do, from 1.
func newSyntaxError(pe toml.ParseError, input string) *syntaxError {
	start := min(max(pe.Position.Start, 0), len(input))
	before := input[:start]
	lineStart := strings.LastIndexByte(before, '\n') + 1
	return &syntaxError{
		line: strings.Count(before, "\n") + 1,
		col:  utf8.RuneCountInString(before[lineStart:]) + 1,
		pe:   pe,
	}
}

// Error is "FILE:LINE:COLUMN: syntax error: MESSAGE" for Load, and
// "syntax error at line LINE, column COLUMN: MESSAGE" for Parse.
func (e *syntaxError) Error() string {
	if e.file != "" {
		return fmt.Sprintf("%s:%d:%d: syntax error: %s", e.file, e.line, e.col, e.pe.Message)
	}
	return fmt.Sprintf("syntax error at line %d, column %d: %s", e.line, e.col, e.pe.Message)
}

func (e *syntaxError) Unwrap() error { return e.pe }

// kind is what a key of Config holds, as TOML sees it.
type kind int

const (
	kindTable kind = iota
	kindString
	kindInt
	kindBool
	kindDuration
	kindStrings
)

var expected = [...]string{
	kindTable:    "a table",
	kindString:   "a string",
	kindInt:      "an integer",
	kindBool:     "true or false",
	kindDuration: "a duration",
	kindStrings:  "a list of strings",
}

// schema maps every dotted key of Config to its kind.
var schema = buildSchema(reflect.TypeFor[Config]())

func buildSchema(t reflect.Type) map[string]kind {
	m := make(map[string]kind)
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			key := prefix + f.Tag.Get("toml")
			switch {
			case f.Type == reflect.TypeFor[Duration]():
				m[key] = kindDuration
			case f.Type.Kind() == reflect.Struct:
				m[key] = kindTable
				walk(key+".", f.Type)
			case f.Type.Kind() == reflect.String:
				m[key] = kindString
			case f.Type.Kind() == reflect.Int:
				m[key] = kindInt
			case f.Type.Kind() == reflect.Bool:
				m[key] = kindBool
			case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.String:
				m[key] = kindStrings
			default:
				panic("config: no TOML kind for field " + key)
			}
		}
	}
	walk("", t)
	return m
}

// checkKeys reports, in file order, every key that Config does not have and
// every value of the wrong type, and returns those keys. An unknown key is
// reported by its shortest unknown prefix: [detector.foo] with bar = 1
// inside gives only "unknown key detector.foo".
func checkKeys(md toml.MetaData, raw map[string]any) ([]error, []toml.Key) {
	var errs []error
	var badKeys []toml.Key
	checked := make(map[string]bool) // dotted names already looked at
	bad := make(map[string]bool)     // dotted names already reported
	for _, k := range md.Keys() {
		for i := 1; i <= len(k); i++ {
			name := k[:i].String()
			if bad[name] {
				break
			}
			kd, ok := schema[name]
			if !ok {
				errs = append(errs, fmt.Errorf(unknownKey+"%s", name))
				bad[name] = true
				badKeys = append(badKeys, k[:i])
				break
			}
			if !checked[name] {
				checked[name] = true
				if err := checkValue(name, kd, lookup(raw, k[:i])); err != nil {
					errs = append(errs, err)
					bad[name] = true
					badKeys = append(badKeys, k[:i])
					break
				}
			}
			if kd != kindTable {
				break // keys below a valid leaf cannot exist
			}
		}
	}
	return errs, badKeys
}

// lookup returns the value at path in raw, or nil.
func lookup(raw map[string]any, path []string) any {
	var v any = raw
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// checkValue says whether v, decoded by toml, fits a key of kind kd.
func checkValue(key string, kd kind, v any) error {
	switch kd {
	case kindTable:
		if _, ok := v.(map[string]any); ok {
			return nil
		}
	case kindString:
		if _, ok := v.(string); ok {
			return nil
		}
	case kindInt:
		if n, ok := v.(int64); ok {
			if int64(int(n)) != n {
				return fmt.Errorf("%s: %d is too large", key, n)
			}
			return nil
		}
	case kindBool:
		if _, ok := v.(bool); ok {
			return nil
		}
	case kindDuration:
		switch x := v.(type) {
		case string:
			var d Duration
			if err := d.UnmarshalText([]byte(x)); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			return nil
		case int64, float64:
			return fmt.Errorf("%s: %v %s", key, x, notDuration)
		}
	case kindStrings:
		if a, ok := v.([]any); ok {
			for i, e := range a {
				if _, ok := e.(string); !ok {
					return fmt.Errorf("%s must be a list of strings, but item %d is %s", key, i+1, typeName(e))
				}
			}
			return nil
		}
	}
	return fmt.Errorf("%s must be %s, not %s", key, expected[kd], typeName(v))
}

// typeName names the type of a value decoded by toml, with its article.
func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	}
	return "an unsupported value"
}
