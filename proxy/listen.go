package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// ListenUnix listens on a unix socket at path with mode (0600 by default;
// 0660 with group), creating its directory 0750 (group-owned by group, so
// its members can reach the socket) if needed. A socket left by a dead
// server is removed; one a live server answers on, or one it cannot tell,
// is an error, so two proxies never fight over a path.
func ListenUnix(path string, mode os.FileMode, group string) (net.Listener, error) {
	if mode == 0 {
		mode = 0o600
	}
	gid := -1
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("socket group: %w", err)
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, err
		}
		if err := os.Chown(dir, -1, gid); err != nil {
			return nil, fmt.Errorf("socket directory group: %w", err)
		}
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		switch {
		case err == nil:
			c.Close()
			return nil, fmt.Errorf("another server is listening on %s", path)
		case !errors.Is(err, syscall.ECONNREFUSED):
			// Busy, slow or not ours to probe: it may be a live server.
			return nil, fmt.Errorf("cannot tell whether a server is listening on %s (%v); remove it by hand if none is", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// Bind in a private directory, set the mode and group there, then move
	// the socket into place: no window in which another user could connect
	// under the umask's default mode, and no change to the process-wide
	// umask, which would race files other goroutines create (etcd's WAL).
	tmp, err := os.MkdirTemp(dir, ".sealrun-sock-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	tmpPath := filepath.Join(tmp, "s")
	l, err := net.Listen("unix", tmpPath)
	if err != nil {
		return nil, err
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // it will live at path, not tmpPath
	fail := func(err error) (net.Listener, error) {
		ul.Close()
		return nil, err
	}
	if err := os.Chown(tmpPath, -1, gid); err != nil {
		return fail(fmt.Errorf("socket group: %w", err))
	}
	if err := os.Chmod(tmpPath, mode); err != nil {
		return fail(err)
	}
	// Link, not rename: a rename would replace a socket another proxy
	// created since the check above; a link fails on it instead.
	if err := os.Link(tmpPath, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			err = fmt.Errorf("another server created %s meanwhile", path)
		}
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		os.Remove(path)
		return fail(err)
	}
	return &unixListener{UnixListener: ul, path: path, file: fi}, nil
}

// unixListener removes its socket file on Close, which net's own unlinking
// cannot do once the socket was moved from where it was bound.
type unixListener struct {
	*net.UnixListener
	path string
	file os.FileInfo // the socket file, so Close removes only its own
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if !errors.Is(err, net.ErrClosed) {
		// A new server may have replaced a socket it found dead: leave it.
		if fi, statErr := os.Lstat(l.path); statErr == nil && os.SameFile(fi, l.file) {
			os.Remove(l.path)
		}
	}
	return err
}
