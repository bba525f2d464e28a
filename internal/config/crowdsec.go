package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
)

// CrowdSec is the [crowdsec] table: the guard's link to a CrowdSec Local
// API (LAPI), off unless Push or Pull is set. With Push every ban the
// guard makes becomes a CrowdSec alert with its decision; with Pull the
// guard, as a bouncer, bans what the LAPI's decisions say.
type CrowdSec struct {
	// Push sends each ban as an alert, logged in as the machine
	// MachineID with Password.
	Push bool `toml:"push"`
	// Pull applies the decisions of the LAPI's decision stream as bans,
	// with the bouncer key APIKey, every PullInterval.
	Pull bool `toml:"pull"`
	// URL is the LAPI's base URL, http:// or https://.
	URL string `toml:"url"`
	// Timeout bounds one request.
	Timeout Duration `toml:"timeout"`
	// MachineID and Password are the machine's credentials (cscli
	// machines add). Load replaces Password with the value of
	// CrowdSecPasswordEnv or the first line of PasswordFile when those
	// are set.
	MachineID    string `toml:"machine_id"`
	Password     Secret `toml:"password"`
	PasswordFile string `toml:"password_file"`
	// APIKey is the bouncer's key (cscli bouncers add). Load replaces it
	// with the value of CrowdSecAPIKeyEnv or the first line of APIKeyFile
	// when those are set.
	APIKey     Secret `toml:"api_key"`
	APIKeyFile string `toml:"api_key_file"`
	// PullInterval is the pause between two pulls of the decision stream.
	PullInterval Duration `toml:"pull_interval"`
	// ScenariosContaining, ScenariosNotContaining and Origins select the
	// decisions pulled (the LAPI filters them): a decision's scenario
	// must contain one of ScenariosContaining (when not empty) and none
	// of ScenariosNotContaining, and its origin must be one of Origins
	// (when not empty).
	ScenariosContaining    []string `toml:"scenarios_containing"`
	ScenariosNotContaining []string `toml:"scenarios_not_containing"`
	Origins                []string `toml:"origins"`
	// WidestIPv4 and WidestIPv6 are the shortest prefix lengths a pulled
	// range decision may have: a wider range is refused.
	WidestIPv4 int `toml:"widest_ipv4"`
	WidestIPv6 int `toml:"widest_ipv6"`
}

// The environment variables that, when set and not empty, override the
// CrowdSec credentials of the configuration file.
const (
	CrowdSecPasswordEnv = "ASTGUARD_CROWDSEC_PASSWORD"
	CrowdSecAPIKeyEnv   = "ASTGUARD_CROWDSEC_API_KEY"
)

// Enabled reports whether the guard talks to CrowdSec at all.
func (c *CrowdSec) Enabled() bool { return c.Push || c.Pull }

// defaultCrowdSec is the [crowdsec] table of Default: off.
func defaultCrowdSec() CrowdSec {
	return CrowdSec{
		URL:                    "http://127.0.0.1:8080/",
		Timeout:                Duration(10 * time.Second),
		PullInterval:           Duration(10 * time.Second),
		ScenariosContaining:    []string{},
		ScenariosNotContaining: []string{},
		Origins:                []string{},
		WidestIPv4:             24,
		WidestIPv6:             48,
	}
}

// minPullInterval keeps a configuration from pulling the decision stream
// in a tight loop.
const minPullInterval = time.Second

// validate checks the [crowdsec] table.
func (c *CrowdSec) validate(p *problems) {
	if c.Enabled() || c.URL != "" {
		if err := checkLAPIURL(c.URL); err != nil {
			p.add("crowdsec.url: %v", err)
		}
	}
	p.positive("crowdsec.timeout", c.Timeout)
	if c.Push {
		switch {
		case c.MachineID == "":
			p.add("crowdsec.machine_id must not be empty while crowdsec.push is true")
		case strings.ContainsFunc(c.MachineID, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
			p.add("crowdsec.machine_id must not contain spaces or control characters")
		}
	}
	for _, s := range []struct {
		key string
		v   Secret
	}{{"crowdsec.password", c.Password}, {"crowdsec.api_key", c.APIKey}} {
		if strings.ContainsAny(string(s.v), "\r\n") {
			p.add("%s must not contain CR or LF", s.key)
		}
	}
	if c.PullInterval < Duration(minPullInterval) {
		p.add("crowdsec.pull_interval must be at least %s", Duration(minPullInterval))
	}
	for _, l := range []struct {
		key  string
		list []string
	}{
		{"crowdsec.scenarios_containing", c.ScenariosContaining},
		{"crowdsec.scenarios_not_containing", c.ScenariosNotContaining},
		{"crowdsec.origins", c.Origins},
	} {
		for i, s := range l.list {
			if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) || unicode.IsControl(r) }) {
				p.add("%s[%d]: %q must be a word without commas, spaces or control characters", l.key, i, s)
			}
		}
	}
	if c.WidestIPv4 < 0 || c.WidestIPv4 > 32 {
		p.add("crowdsec.widest_ipv4 must be between 0 and 32")
	}
	if c.WidestIPv6 < 0 || c.WidestIPv6 > 128 {
		p.add("crowdsec.widest_ipv6 must be between 0 and 128")
	}
}

// checkLAPIURL says what is wrong with the Local API's URL, if anything.
func checkLAPIURL(s string) error {
	if s == "" {
		return errors.New(`must be set while crowdsec.push or crowdsec.pull is true (e.g. "http://127.0.0.1:8080/")`)
	}
	u, err := url.Parse(s)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf(`%q must be an http:// or https:// URL with a host`, s)
	case u.User != nil:
		return fmt.Errorf("%q must not hold credentials: use crowdsec.password or crowdsec.api_key", redactURL(u))
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%q must have no query or fragment", s)
	}
	return nil
}

// redactURL writes u without its user information.
func redactURL(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

// resolveCrowdSec sets the CrowdSec password and API key from their
// environment variables or, failing that, from the first line of their
// files (relative to dir unless absolute); with push or pull on, a
// credential still empty is a problem. A file is not read when its
// environment variable is set.
func (c *Config) resolveCrowdSec(dir string) []error {
	cs := &c.CrowdSec
	var errs []error
	for _, s := range []struct {
		key, fileKey, env string
		file              string
		dst               *Secret
		needed            bool
	}{
		{"crowdsec.password", "crowdsec.password_file", CrowdSecPasswordEnv, cs.PasswordFile, &cs.Password, cs.Push},
		{"crowdsec.api_key", "crowdsec.api_key_file", CrowdSecAPIKeyEnv, cs.APIKeyFile, &cs.APIKey, cs.Pull},
	} {
		if !s.needed {
			continue // neither read nor required while its part is off
		}
		if v := os.Getenv(s.env); v != "" {
			if strings.ContainsAny(v, "\r\n") {
				errs = append(errs, errors.New(s.env+" must not contain CR or LF"))
				continue
			}
			*s.dst = Secret(v)
		} else if s.file != "" {
			v, err := readFirstLine(resolvePath(dir, s.file))
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("%s: %w", s.fileKey, err))
				continue
			case strings.ContainsRune(v, '\r'):
				errs = append(errs, fmt.Errorf("%s: the secret must not contain CR or LF", s.fileKey))
				continue
			}
			*s.dst = Secret(v)
		}
		if *s.dst == "" {
			on := "crowdsec.push"
			if s.key == "crowdsec.api_key" {
				on = "crowdsec.pull"
			}
			errs = append(errs, fmt.Errorf("%s is empty while %s is true: set %s, %s or %s", s.key, on, s.key, s.fileKey, s.env))
		}
	}
	return errs
}

// resolvePath is path, or path relative to dir when it is relative.
func resolvePath(dir, path string) string {
	if path != "" && !filepath.IsAbs(path) {
		return filepath.Join(dir, path)
	}
	return path
}

// CrowdSecSecretFiles returns the files Load read the CrowdSec
// credentials from, given the configuration file's path (those whose
// environment variable is not set and whose part, push or pull, is on).
// `guard run` checks their owner and mode as it does the AMI secret's.
func (c *Config) CrowdSecSecretFiles(configPath string) []string {
	dir := filepath.Dir(configPath)
	var out []string
	if c.CrowdSec.Push && c.CrowdSec.PasswordFile != "" && os.Getenv(CrowdSecPasswordEnv) == "" {
		out = append(out, resolvePath(dir, c.CrowdSec.PasswordFile))
	}
	if c.CrowdSec.Pull && c.CrowdSec.APIKeyFile != "" && os.Getenv(CrowdSecAPIKeyEnv) == "" {
		out = append(out, resolvePath(dir, c.CrowdSec.APIKeyFile))
	}
	return out
}
