import pytest

from tests.helpers import small_cnn


@pytest.fixture(scope="session")
def cnn_bn():
    """A tiny CNN exported with BatchNorm kept (ModelProto)."""
    return small_cnn(keep_bn=True)


@pytest.fixture(scope="session")
def cnn_folded():
    """The same CNN exported the default way (BN folded into Conv)."""
    return small_cnn(keep_bn=False)
