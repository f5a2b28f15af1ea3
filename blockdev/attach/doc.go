// Package attach turns exported volumes into block devices and filesystems
// on this host: loop devices over FUSE files (losetup), the kernel NBD client
// connected to the daemon's own NBD server (ioctl NBD_SET_SOCK / NBD_DO_IT),
// and the mount-table, blkid, mkfs and mount helpers the host verbs use.
//
// Everything here acts on real kernel objects and needs root. The helpers
// shell out where the util-linux tool is the interface operators know and
// trust (losetup, blkid, mkfs.*) and call the kernel directly otherwise
// (mount(2), umount2(2), the nbd ioctls).
package attach
