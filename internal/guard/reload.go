package guard

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

// ReloadResult is what a reload did.
type ReloadResult struct {
	// File is the configuration file (Options.ConfigFile).
	File string
	// Err is why the file was refused; the running configuration is kept.
	Err error
	// Applied are the keys that changed and are in effect now.
	Applied []string
	// Restart are the keys that changed but keep their running value until
	// the next start.
	Restart []string
	// Refused are the keys that changed to a value the guard cannot use
	// (a secrets file it would not write to): the running value is kept.
	Refused []string
}

// restartKeys are the keys (or tables) a reload cannot apply, because what
// they set up exists once, from the start: the AMI sessions, the metrics
// listener, the firewall, the bans' state file and its lock, the admin
// socket, the notifier and its senders, the secret store (its database
// connections), the link to CrowdSec. When one changes, the running value is kept (so that what the
// guard reports and does stays true) and a warning names the key.
var restartKeys = []string{
	"ami",
	"metrics.listen",
	"response.firewall",
	"response.firewall_match",
	"response.chain",
	"response.ipv6",
	"response.ipv6_prefix",
	"response.state_file",
	"response.admin_socket",
	"notify",
	"secrets",
	"crowdsec",
}

// liveKeys are the keys (or tables) a reload applies at once: the mode
// (the bans manager's and the incident book's) and policy (a new
// policy.Table, read for every alert), log.level (the shared level gate),
// metrics.silence_alarm, the detector's thresholds and allow-lists
// (Detector.SetConfig), the never-blocked networks (bans.SetNever) and the
// responder's settings, read for every action: response.secrets_file is
// the file of the next rotation; response.incident_quiet is the incident
// book's (incident.Book.SetQuiet), counted from each incident's last alert.
var liveKeys = []string{
	"mode",
	"log",
	"metrics.silence_alarm",
	"detector",
	"allow",
	"response.ban_duration",
	"response.incident_quiet",
	"response.secrets_file",
	"response.never_block",
	"response.protect_previous_sources",
	"response.hangup_cause",
	"response.retry_max",
	"response.retry_backoff",
	"policy",
}

// under reports whether key is one of keys or below one of them.
func under(key string, keys []string) bool {
	for _, k := range keys {
		if key == k || strings.HasPrefix(key, k+".") {
			return true
		}
	}
	return false
}

// reload reads the configuration again and applies every key it can; the
// keys it cannot keep their running value, each with a warning. A bad file
// keeps the whole running configuration. Every message names the file.
func (g *Guard) reload(ctx context.Context, det *detector.Detector) ReloadResult {
	res := ReloadResult{File: g.opts.ConfigFile}
	log := g.log.With().Str("component", "guard").Str("config", res.File).Logger()
	defer func() {
		if g.opts.Reloaded != nil {
			g.opts.Reloaded(res)
		}
	}()
	if g.opts.Load == nil {
		res.Err = errors.New("no configuration file to read")
		log.Warn().Msg("reload asked, but no configuration file to read")
		return res
	}
	next, err := g.opts.Load()
	if err != nil {
		res.Err = err
		log.Error().Err(err).Msg("configuration reload failed: keeping the running configuration")
		return res
	}
	running := g.cfg.Load()
	for _, k := range config.Changed(running, next) {
		// A secrets file every rotation would refuse is refused now, as
		// at start, not found out during an attack: the running one stays.
		if k == "response.secrets_file" {
			if err := secret.CheckFile(next.Response.SecretsFile); err != nil {
				next.CopyKey(k, running)
				res.Refused = append(res.Refused, k)
				log.Error().Str("key", k).Err(err).Str("kept", running.Response.SecretsFile).
					Msg("configuration key refused: the running value is kept")
				continue
			}
		}
		// A key in neither list (a new one) is treated as needing a
		// restart: the guard never claims to apply what it does not.
		if under(k, liveKeys) && !under(k, restartKeys) {
			res.Applied = append(res.Applied, k)
			continue
		}
		next.CopyKey(k, running)
		res.Restart = append(res.Restart, k)
		log.Warn().Str("key", k).Msg("configuration key changed, but it takes effect at the next start: the running value is kept")
	}
	g.level.set(next.Log.Level)
	g.metrics.SetSilenceAlarm(time.Duration(next.Metrics.SilenceAlarm))
	g.events.SetSilenceAlarm(time.Duration(next.Metrics.SilenceAlarm))
	det.SetConfig(next.Detector())
	if t, err := policy.NewTable(&next.Policy); err != nil {
		log.Error().Err(err).Msg("the new [policy] cannot be used: keeping the running one")
	} else {
		g.table = t
	}
	g.book.SetQuiet(time.Duration(next.Response.IncidentQuiet))
	if next.Mode != running.Mode {
		// Alerts wait while this runs (the detector loop reloads), so
		// none is decided between the bans' and the book's switch; the
		// new mode shows in the configuration once it is in effect.
		g.switchMode(next.Mode)
	}
	g.cfg.Store(next)
	g.refreshNever(ctx, "reload", true)
	log.Info().Str("mode", next.Mode).Strs("applied", nonNil(res.Applied)).Strs("restart_needed", nonNil(res.Restart)).
		Msg("configuration reloaded")
	return res
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// levelGate is the level of every logger of the guard, which a reload
// changes (log.level). It is their zerolog Sampler: zerolog asks it before
// it builds an event, so a line below the level costs nothing.
type levelGate struct{ level atomic.Int32 }

var _ zerolog.Sampler = (*levelGate)(nil)

// Sample reports whether an event of level l is logged.
func (g *levelGate) Sample(l zerolog.Level) bool { return l >= zerolog.Level(g.level.Load()) }

// set takes log.level ("debug", "info", "warn" or "error"); anything else
// is info.
func (g *levelGate) set(level string) {
	l := zerolog.InfoLevel
	if slices.Contains([]string{"debug", "info", "warn", "error"}, level) {
		l, _ = zerolog.ParseLevel(level)
	}
	g.level.Store(int32(l))
}
