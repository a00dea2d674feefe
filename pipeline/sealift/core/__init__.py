"""The ground every stage stands on: errors, console, paths, atomic writes, units, the offline env and net guard, disk space, config and code scans. Imports nothing else of sealift."""
