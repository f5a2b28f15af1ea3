package lazyfs

import osexec "os/exec"

func run(name string, args ...string) ([]byte, error) {
	return osexec.Command(name, args...).CombinedOutput()
}
