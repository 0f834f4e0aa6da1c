"""``python -m zerop_deploy`` works like the ``zerop-deploy`` command."""

from zerop_deploy.cli.main import main

if __name__ == "__main__":
    main()
