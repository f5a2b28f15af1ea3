// Package atomicfile publishes small files (node state, the attachment list,
// the snapshot schedule) so that a crash at any moment leaves either the old
// file or the new one, whole — never a torn or empty one.
//
// The steps, as etcd's wal and pebble publish their files: write a temporary
// file in the same directory, fsync it, rename it over the target, fsync the
// directory (the rename is durable only once the directory is).
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile replaces the file at path with data, with permissions perm. When
// it returns nil the new content is durable; when it fails, the file at path
// is the old one (or absent, if there was none) and no temporary file is left
// behind — except after a failed fsync of the directory, when the new file is
// in place but may not survive a crash.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	tmp := f.Name()
	if err := writeSync(f, data, perm); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("atomicfile: %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("atomicfile: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("atomicfile: %s: sync directory: %w", path, err)
	}
	return nil
}

// Remove removes the files at paths (a missing one is no error) and makes
// their removal durable: their directories are synced once each.
func Remove(paths ...string) error {
	dirs := map[string]bool{}
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("atomicfile: %w", err)
		}
		dirs[filepath.Dir(p)] = true
	}
	for dir := range dirs {
		if err := syncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("atomicfile: %s: sync directory: %w", dir, err)
		}
	}
	return nil
}

// writeSync fills the temporary file and makes it durable; it closes f.
func writeSync(f *os.File, data []byte, perm os.FileMode) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
