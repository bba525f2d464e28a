package secret

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"

	"github.com/astguard/astguard/internal/ami"
)

// The checks and lookups the stores share, over AMI. None of them puts a
// secret into an error or a text: a secret is compared, never shown.

// same compares two secrets in constant time.
func same(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// pjsipEndpoint asks Asterisk for endpoint's details (PJSIPShowEndpoint):
// the EndpointDetail first, then an AuthDetail per auth, and the rest.
func pjsipEndpoint(ctx context.Context, a AMI, endpoint string) ([]ami.Response, error) {
	_, items, err := a.List(ctx, ami.Action{Name: "PJSIPShowEndpoint", Headers: []ami.Header{{Key: "Endpoint", Value: endpoint}}})
	return items, err
}

// EndpointAuths returns the auth objects PJSIP endpoint uses for the
// requests it receives, as Asterisk loaded it (EndpointDetail's Auth: a
// list separated by commas), whether the endpoint lives in pjsip.conf or
// in a realtime table. An endpoint Asterisk does not know is an
// *ami.ActionError ("Unable to retrieve endpoint 300").
func EndpointAuths(ctx context.Context, a AMI, endpoint string) ([]string, error) {
	items, err := pjsipEndpoint(ctx, a, endpoint)
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		if it.Get("Event") != "EndpointDetail" {
			continue
		}
		var auths []string
		for s := range strings.SplitSeq(it.Get("Auth"), ",") {
			if s = strings.TrimSpace(s); s != "" {
				auths = append(auths, s)
			}
		}
		return auths, nil
	}
	return nil, fmt.Errorf("PJSIPShowEndpoint %s gave no EndpointDetail", endpoint)
}

// AuthUsers returns the PJSIP endpoints whose inbound auths include
// auth, as Asterisk has them (PJSIPShowEndpoints' EndpointList: Auths, a
// list separated by commas): a new password of auth is every one's.
func AuthUsers(ctx context.Context, a AMI, auth string) ([]string, error) {
	_, items, err := a.List(ctx, ami.Action{Name: "PJSIPShowEndpoints"})
	var ae *ami.ActionError
	if errors.As(err, &ae) && strings.HasPrefix(ae.Message, "No endpoints found") {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var users []string
	for _, it := range items {
		if it.Get("Event") != "EndpointList" {
			continue
		}
		for s := range strings.SplitSeq(it.Get("Auths"), ",") {
			if strings.TrimSpace(s) == auth {
				users = append(users, it.Get("ObjectName"))
				break
			}
		}
	}
	return users, nil
}

// CheckPJSIP checks that Asterisk uses secret as the password of auth,
// the auth object of PJSIP endpoint ("": the one its EndpointDetail
// names), by PJSIPShowEndpoint: its AuthDetail shows the password
// res_pjsip has (loaded from pjsip.conf at a reload, or read from the
// realtime table, through any cache). It returns how it checked, or an
// error wrapping ErrNotTaken when the password is another.
func CheckPJSIP(ctx context.Context, a AMI, endpoint, auth, secret string) (string, error) {
	items, err := pjsipEndpoint(ctx, a, endpoint)
	if err != nil {
		return "", err
	}
	if auth == "" {
		for _, it := range items {
			if it.Get("Event") == "EndpointDetail" {
				auth = it.Get("Auth")
				break
			}
		}
	}
	for _, it := range items {
		if it.Get("Event") != "AuthDetail" || it.Get("ObjectName") != auth {
			continue
		}
		if !same(it.Get("Password"), secret) {
			return "", fmt.Errorf("%w: PJSIPShowEndpoint %s shows another password in auth %s", ErrNotTaken, endpoint, auth)
		}
		return fmt.Sprintf("PJSIPShowEndpoint %s shows it in auth %s", endpoint, auth), nil
	}
	return "", fmt.Errorf("%w: PJSIPShowEndpoint %s shows no auth %s", ErrNotTaken, endpoint, auth)
}

// CheckGetConfig checks that key in [section] of file is secret, as
// GetConfig reads the file now.
func CheckGetConfig(ctx context.Context, a AMI, file, section, key, secret string) (string, error) {
	resp, err := a.Do(ctx, ami.Action{Name: "GetConfig", Headers: []ami.Header{{Key: "Filename", Value: file}, {Key: "Category", Value: section}}})
	if err != nil {
		return "", err
	}
	for _, c := range parseGetConfig(resp) {
		if c.name != section {
			continue
		}
		v, ok := c.get(key)
		if !ok {
			return "", fmt.Errorf("%w: [%s] of %s has no %s line", ErrNotTaken, section, file, key)
		}
		if !same(v, secret) {
			return "", fmt.Errorf("%w: [%s] of %s holds another %s", ErrNotTaken, section, file, key)
		}
		return fmt.Sprintf("GetConfig of %s shows it in [%s]", file, section), nil
	}
	return "", fmt.Errorf("%w: %s has no [%s]", ErrNotTaken, file, section)
}

// notCached is how Asterisk answers SorceryMemoryCacheExpireObject for an
// object its cache does not hold (res_sorcery_memory_cache.c).
const notCached = "The provided object could not be expired from the cache"

// ExpireCached removes object from the sorcery memory cache named cache
// (SorceryMemoryCacheExpireObject, write class system), so that Asterisk
// reads it from its backend, the realtime table, at its next use. An
// object the cache does not hold is no error: nothing stale is left.
func ExpireCached(ctx context.Context, a AMI, cache, object string) error {
	_, err := a.Do(ctx, ami.Action{Name: "SorceryMemoryCacheExpireObject", Headers: []ami.Header{{Key: "Cache", Value: cache}, {Key: "Object", Value: object}}})
	var ae *ami.ActionError
	if errors.As(err, &ae) && strings.HasPrefix(ae.Message, notCached) {
		return nil
	}
	return err
}

// GetConfigValue returns the value of key in [section] of file as
// GetConfig reads it, and whether it is there (a missing file or section
// is not an error: false).
func GetConfigValue(ctx context.Context, a AMI, file, section, key string) (string, bool, error) {
	resp, err := a.Do(ctx, ami.Action{Name: "GetConfig", Headers: []ami.Header{{Key: "Filename", Value: file}, {Key: "Category", Value: section}}})
	var ae *ami.ActionError
	if errors.As(err, &ae) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	for _, c := range parseGetConfig(resp) {
		if c.name == section {
			v, ok := c.get(key)
			return v, ok, nil
		}
	}
	return "", false, nil
}
