package config

import (
	"reflect"
	"strings"
)

// leafKeys are the dotted keys of Config that hold a value (not a table),
// in the order of the struct, which is that of the example file.
var leafKeys = func() []string {
	var keys []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			key := prefix + f.Tag.Get("toml")
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[Duration]() {
				walk(key+".", f.Type)
				continue
			}
			keys = append(keys, key)
		}
	}
	walk("", reflect.TypeFor[Config]())
	return keys
}()

// Keys returns every dotted key of the configuration that holds a value
// ("ami.address", "detector.call_rate.window", ...), in file order.
func Keys() []string { return append([]string(nil), leafKeys...) }

// Changed returns the keys (as Keys names them) whose values differ
// between a and b, in file order. An empty list equals a missing one. A
// secret is compared, never shown: only its key is returned.
func Changed(a, b *Config) []string {
	var out []string
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	for _, k := range leafKeys {
		fa, fb := field(va, k), field(vb, k)
		if fa.Kind() == reflect.Slice && fa.Len() == 0 && fb.Len() == 0 {
			continue
		}
		if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			out = append(out, k)
		}
	}
	return out
}

// CopyKey sets key (a key of Keys, or a table such as "ami") in c to its
// value in from. Lists are copied, not shared. It reports false, and
// changes nothing, for a key Config does not have.
func (c *Config) CopyKey(key string, from *Config) bool {
	dst, src := field(reflect.ValueOf(c).Elem(), key), field(reflect.ValueOf(from).Elem(), key)
	if !dst.IsValid() {
		return false
	}
	dst.Set(deepCopy(src))
	return true
}

// deepCopy returns v with its slices copied, in structs too.
func deepCopy(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		out := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		reflect.Copy(out, v)
		return out
	case reflect.Struct:
		out := reflect.New(v.Type()).Elem()
		out.Set(v)
		for i := range v.NumField() {
			if out.Field(i).CanSet() {
				out.Field(i).Set(deepCopy(v.Field(i)))
			}
		}
		return out
	}
	return v
}

// field returns the field of the struct v (a Config) named by the dotted
// key, or the zero Value when there is none.
func field(v reflect.Value, key string) reflect.Value {
	for part := range strings.SplitSeq(key, ".") {
		if v.Kind() != reflect.Struct {
			return reflect.Value{}
		}
		found := false
		for i := range v.NumField() {
			if v.Type().Field(i).Tag.Get("toml") == part {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			return reflect.Value{}
		}
	}
	return v
}
