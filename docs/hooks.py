"""MkDocs hooks: the reference pages are generated from the code at build time
(`htl_ray.reference`), added to the site's files and never written into the repository."""

from __future__ import annotations

from mkdocs.structure.files import File, Files


def on_files(files: Files, config) -> Files:
    from htl_ray.reference import pages

    for path, text in pages().items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=text))
    return files
