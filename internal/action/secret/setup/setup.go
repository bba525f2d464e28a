// Package setup turns the configuration's [secrets] table into the secret
// store the guard rotates with, and says why it chose it: `guard
// check-config` prints the choice, `guard run` logs it at its start.
package setup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/action/secret/sqlstore"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
)

// Choice is the store a configuration picks.
type Choice struct {
	// Store is secret.StoreFiles, StoreFreePBX or StoreRealtime, or
	// "files+realtime" (auto on a box that is not FreePBX, with a
	// realtime database: the files for the extensions they hold, the
	// tables for the others).
	Store string
	// Why says how it was chosen, in a sentence for the administrator.
	Why string
	// Database describes the database used (no password); "" for the
	// files.
	Database string
	// Err is why the chosen store cannot be used (FreePBX's settings
	// unreadable, a password file missing): every rotation then fails,
	// saying so. The guard still starts: hang-ups and bans go on.
	Err error
	// ReloadTimeout is how long the store's reload may take on top of
	// the AMI actions (FreePBX's reload_timeout); 0 for the others.
	ReloadTimeout time.Duration

	cfg      config.Secrets
	freepbx  *config.DSN
	realtime *config.DSN
	// password is the database's, behind a pointer: printing a Choice
	// with %+v shows an address, never the password.
	password *config.Secret
}

// FilesAndRealtime is Choice.Store for auto with a realtime database.
const FilesAndRealtime = "files+realtime"

// Sockets are where Choose looks for MySQL's unix socket when FreePBX's
// settings say localhost (tests change it).
var Sockets = sqlstore.MySQLSockets

// Choose picks the store of s. It reads FreePBX's settings file and the
// password files; it connects to nothing.
func Choose(s config.Secrets) Choice {
	c := Choice{cfg: s}
	conf := s.FreePBX.Conf
	_, statErr := os.Stat(conf)
	isFreePBX := !errors.Is(statErr, fs.ErrNotExist)
	switch s.Store {
	case config.StoreFiles:
		c.Store, c.Why = secret.StoreFiles, `secrets.store = "files": sip.conf and pjsip.conf, changed over AMI (UpdateConfig)`
		if isFreePBX {
			c.Why += "; but " + conf + " exists: FreePBX writes those files from its database and puts the old secret back at its next Apply Config"
		}
	case config.StoreFreePBX:
		c.Store, c.Why = secret.StoreFreePBX, `secrets.store = "freepbx": FreePBX's database, then `+reloadText(s)
	case config.StoreRealtime:
		c.Store, c.Why = secret.StoreRealtime, `secrets.store = "realtime": the tables `+s.Realtime.PSAuths+" and "+s.Realtime.SIPPeers
	default: // auto
		switch {
		case isFreePBX:
			c.Store = secret.StoreFreePBX
			c.Why = "auto: " + conf + " exists, a FreePBX box, whose Apply Config writes sip.conf and pjsip.conf from its database: FreePBX's database, then " + reloadText(s)
		case s.Realtime.DSN != "":
			c.Store = FilesAndRealtime
			c.Why = "auto: no " + conf + ", and secrets.realtime.dsn is set: sip.conf and pjsip.conf (over AMI) for an extension whose section is there, the tables " +
				s.Realtime.PSAuths + " and " + s.Realtime.SIPPeers + " for the others"
		default:
			c.Store = secret.StoreFiles
			c.Why = "auto: no " + conf + " and no secrets.realtime.dsn: sip.conf and pjsip.conf, changed over AMI (UpdateConfig); an extension without its section there is refused"
		}
	}
	switch c.Store {
	case secret.StoreFreePBX:
		c.ReloadTimeout = time.Duration(s.FreePBX.ReloadTimeout)
		c.Err = c.freePBXDatabase()
	case secret.StoreRealtime, FilesAndRealtime:
		c.Err = c.realtimeDatabase()
	}
	return c
}

func reloadText(s config.Secrets) string {
	return fmt.Sprintf("`%s` (at most %s)", sqlstore.Command{Argv: s.FreePBX.ReloadCommand}, s.FreePBX.ReloadTimeout)
}

// freePBXDatabase finds FreePBX's database: secrets.freepbx.dsn, or the
// settings file's.
func (c *Choice) freePBXDatabase() error {
	f := c.cfg.FreePBX
	if f.DSN != "" {
		d, err := config.ParseDSN(f.DSN)
		if err != nil {
			return fmt.Errorf("secrets.freepbx.dsn: %w", err)
		}
		c.freepbx, c.Database = &d, d.String()+" (secrets.freepbx.dsn)"
		pw, err := config.DBPassword(config.FreePBXPasswordEnv, f.PasswordFile)
		if err != nil {
			return fmt.Errorf("the password of secrets.freepbx.dsn: %w", err)
		}
		c.password = &pw
		return nil
	}
	conf, err := sqlstore.ReadFreePBXConf(f.Conf)
	if err != nil {
		return fmt.Errorf("FreePBX's settings: %w", err)
	}
	d, err := conf.DSN(Sockets)
	if err != nil {
		return fmt.Errorf("FreePBX's settings %s: %w", f.Conf, err)
	}
	c.freepbx, c.password, c.Database = &d, &conf.Password, d.String()+" (from "+f.Conf+")"
	return nil
}

// realtimeDatabase reads secrets.realtime.dsn and its password.
func (c *Choice) realtimeDatabase() error {
	r := c.cfg.Realtime
	d, err := config.ParseDSN(r.DSN)
	if err != nil {
		return fmt.Errorf("secrets.realtime.dsn: %w", err)
	}
	c.realtime, c.Database = &d, d.String()
	pw, err := config.DBPassword(config.RealtimePasswordEnv, r.PasswordFile)
	if err != nil {
		return fmt.Errorf("the password of secrets.realtime.dsn: %w", err)
	}
	c.password = &pw
	return nil
}

// Build makes the chosen store, which sends its AMI actions (GetConfig,
// UpdateConfig, PJSIPShowEndpoint, SorceryMemoryCacheExpireObject) with a.
// Close releases its database. A choice with an Err gives a store whose
// every rotation fails with it.
func (c Choice) Build(a secret.AMI) (secret.Store, func() error, error) {
	none := func() error { return nil }
	if c.Err != nil {
		return unusable{c.Err}, none, nil
	}
	files := secret.ConfigFiles{AMI: a}
	switch c.Store {
	case secret.StoreFiles:
		return files, none, nil
	case secret.StoreFreePBX:
		db, err := sqlstore.Open(*c.freepbx, *c.password)
		if err != nil {
			return nil, none, err
		}
		f := c.cfg.FreePBX
		return &sqlstore.FreePBX{DB: db, AMI: a, Reload: sqlstore.Command{Argv: f.ReloadCommand, Timeout: time.Duration(f.ReloadTimeout)}}, db.Close, nil
	}
	db, err := sqlstore.Open(*c.realtime, *c.password)
	if err != nil {
		return nil, none, err
	}
	r := c.cfg.Realtime
	rt := &sqlstore.Realtime{DB: db, AMI: a, Auths: r.PSAuths, Peers: r.SIPPeers, AuthCache: r.AuthCache}
	if c.Store == FilesAndRealtime {
		return secret.Auto{Files: files, Realtime: rt}, db.Close, nil
	}
	return rt, db.Close, nil
}

// unusable is the store of a choice that cannot be used: every rotation
// fails, saying why.
type unusable struct{ err error }

func (u unusable) Plan(context.Context, ami.Extension) (secret.Plan, error) {
	return secret.Plan{}, &secret.Failure{Err: u.err, State: "nothing was changed: the old secret is still in use",
		ByHand: "fix [secrets] (guard check-config says what is wrong), restart the guard, and change this secret by hand meanwhile"}
}

func (u unusable) Apply(context.Context, secret.Plan, string) error { return u.err }

func (u unusable) Verify(context.Context, ami.Extension, secret.Plan, string) (string, error) {
	return "", u.err
}
